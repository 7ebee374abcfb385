from cl.models.alexnet import AlexNet
from cl.models.alexnet_imagenet import AlexNetImageNet
from cl.models.mlp import MLP
from cl.models.network import TaskNetwork
from cl.models.resnet import ResNet
from cl.models.resnet_imagenet import ResNet18ImageNet

__all__ = ["AlexNet", "AlexNetImageNet", "MLP", "ResNet", "ResNet18ImageNet", "TaskNetwork"]
