from cl.models.alexnet import AlexNet
from cl.models.alexnet_imagenet import AlexNetImageNet
from cl.models.mlp import MLP
from cl.models.network import TaskNetwork
from cl.models.resnet import ResNet

__all__ = ["AlexNet", "AlexNetImageNet", "MLP", "ResNet", "TaskNetwork"]
