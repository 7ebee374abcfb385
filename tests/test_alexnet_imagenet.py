"""The ImageNet AlexNet trunk: torchvision's layout, loading a torchvision state dict (checked against a file written
under torchvision's names and shapes), the per-batch resize, and layers kept frozen by every approach."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cl.approaches.regularization.mas import MAS
from cl.approaches.baselines.sgd import SGD
from cl.errors import ConfigError
from cl.models.alexnet_imagenet import AlexNetImageNet
from cl.models.network import TaskNetwork
from data.device_stream import DeviceStream
from data.stream import InputTransform, Split, Stream, Task
from tests.fixtures import torchvision_alexnet_shapes, write_torchvision_alexnet

SMALL_FC = (32, 16)


def trunk(**kwargs) -> AlexNetImageNet:
    return AlexNetImageNet((3, 64, 64), **{"fc_sizes": SMALL_FC, "input_size": None, **kwargs})


def test_torchvision_names_and_shapes_without_its_last_layer():
    net = AlexNetImageNet((3, 64, 64))
    expected = {k: v for k, v in torchvision_alexnet_shapes().items() if not k.startswith("classifier.6.")}
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expected
    assert net.out_dim == 4096


def test_pretrained_file_loads_and_its_imagenet_classifier_is_ignored(tmp_path):
    path = write_torchvision_alexnet(tmp_path / "alexnet.pth", SMALL_FC)
    net = trunk(pretrained=str(path))
    state = torch.load(path, weights_only=True)
    for name, value in net.state_dict().items():
        assert torch.equal(value, state[name])


def _expect_one_line(path, match: str):
    with pytest.raises(ConfigError, match=match) as err:
        trunk(pretrained=str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_missing_file_stops_with_one_line(tmp_path):
    _expect_one_line(tmp_path / "nowhere.pth", "not found")


def test_missing_key_stops_with_one_line_naming_it(tmp_path):
    state = torch.load(write_torchvision_alexnet(tmp_path / "a.pth", SMALL_FC), weights_only=True)
    del state["features.3.bias"]
    state["features.99.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "a.pth")
    _expect_one_line(tmp_path / "a.pth", r"missing features\.3\.bias; unexpected features\.99\.weight")


def test_wrong_shape_stops_with_one_line_naming_it(tmp_path):
    path = write_torchvision_alexnet(tmp_path / "narrow.pth", (24, 16))
    _expect_one_line(path, r"wrong shape classifier\.1\.bias \[24\] \(model \[32\]\), classifier\.1\.weight")


def test_input_is_resized_on_the_device_per_batch():
    resizing, plain = trunk(input_size=80).eval(), trunk().eval()
    plain.load_state_dict(resizing.state_dict())
    x = torch.randn(2, 3, 64, 64)
    expected = plain(F.interpolate(x, size=(80, 80), mode="bilinear", align_corners=False))
    torch.testing.assert_close(resizing(x), expected)


def test_unknown_trainable_layer_stops_with_one_line():
    with pytest.raises(ConfigError, match=r"\['features\.7'\].*features\.0, features\.3"):
        trunk(trainable_layers=["features.7"])


def test_frozen_layers_are_neither_trained_nor_handed_to_the_approach(fit_task):
    torch.manual_seed(0)
    layers = ["features.10", "classifier.4"]
    net = TaskNetwork(lambda input_shape: trunk(trainable_layers=layers), (3, 64, 64), [2])
    g = torch.Generator().manual_seed(0)
    splits = [Split(torch.randint(0, 256, (32, 3, 64, 64), dtype=torch.uint8, generator=g),
                    torch.randint(0, 2, (32,), generator=g)) for _ in range(3)]
    stream = Stream("images", [Task("t0", [0, 1], *splits, transform=InputTransform())], (3, 64, 64))
    approach = SGD(net, lr=0.1)
    approach.setup_stream(stream)
    trained = {id(p) for p in approach.trainable_parameters()}
    named = dict(net.trunk.named_parameters())
    assert {n for n, p in named.items() if id(p) in trained} == {f"{layer}.{kind}" for layer in layers
                                                                 for kind in ("weight", "bias")}
    before = {n: p.detach().clone() for n, p in named.items()}
    fit_task(approach, DeviceStream(stream, "cpu", shared_head=False), 0, epochs=1, validate=True)
    for name, p in named.items():
        assert torch.equal(p, before[name]) != (id(p) in trained), name
    mas = MAS(net)  # a regularizer builds what it regularizes from the same trainable set
    assert set(mas.regularized) == {f"trunk.{layer}.{kind}" for layer in layers for kind in ("weight", "bias")}
