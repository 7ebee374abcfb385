"""The ImageNet ResNet-18 trunk: torchvision's names and shapes (checked against a file written under torchvision's
layout), loading a torchvision state dict, and a mismatched file refused in one line."""
import pytest
import torch

from cl.errors import ConfigError
from cl.models.resnet_imagenet import ResNet18ImageNet
from tests.fixtures import torchvision_resnet18_shapes, write_torchvision_resnet18


def test_torchvision_names_and_shapes_without_its_classifier():
    trunk = ResNet18ImageNet((3, 32, 32), input_size=None)
    expected = {k: v for k, v in torchvision_resnet18_shapes().items() if not k.startswith("fc.")}
    assert {k: tuple(v.shape) for k, v in trunk.state_dict().items()} == expected
    assert trunk(torch.zeros(2, 3, 32, 32)).shape == (2, 512)


def test_a_torchvision_file_loads_and_a_mismatched_one_stops_in_one_line(tmp_path):
    path = write_torchvision_resnet18(tmp_path / "resnet18.pth")
    trunk = ResNet18ImageNet((3, 40, 40), input_size=64, pretrained=str(path))
    state = torch.load(path, weights_only=True)
    assert torch.equal(trunk.layer3[0].downsample[0].weight, state["layer3.0.downsample.0.weight"])
    assert torch.equal(trunk.bn1.running_var, state["bn1.running_var"])
    del state["layer4.1.conv2.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ConfigError) as err:
        ResNet18ImageNet((3, 40, 40), pretrained=str(tmp_path / "broken.pth"))
    assert "missing layer4.1.conv2.weight" in str(err.value) and "\n" not in str(err.value)
