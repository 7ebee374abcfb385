"""AlexNet and ResNet-18 trunks: the shapes of the papers, build-time errors, and BatchNorm freezing."""
from __future__ import annotations

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from cl.errors import ConfigError
from cl.models.alexnet import AlexNet
from cl.models.resnet import ResNet
from tests.conftest import CONF_DIR

# what BLIP's quantized-parameter mechanism (and any per-layer method) can rely on
ALLOWED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.ReLU, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d,
           nn.AdaptiveAvgPool2d, nn.Flatten, nn.Sequential)


def _layer_types(trunk: nn.Module) -> set[type]:
    return {type(m) for m in trunk.modules() if m is not trunk and not type(m).__name__ == "BasicBlock"}


def test_alexnet_32_blip_cifar_and_mixture_widths():
    cifar = AlexNet((3, 32, 32), mul=2)
    convs = [m for m in cifar.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 256, 512] and [c.kernel_size[0] for c in convs] == [4, 3, 2]
    assert [m.out_features for m in cifar.modules() if isinstance(m, nn.Linear)] == [2048, 2048]
    assert cifar(torch.zeros(2, 3, 32, 32)).shape == (2, 2048) and cifar.out_dim == 2048
    mixture = AlexNet((3, 32, 32), mul=0.8, scale_fc=True)
    assert [c.out_channels for c in mixture.modules() if isinstance(c, nn.Conv2d)] == [51, 102, 205]
    assert mixture.out_dim == 1638 and mixture[-3].in_features == 1638
    assert _layer_types(cifar) <= set(ALLOWED)


def test_alexnet_84_minimagenet_shapes_and_dropouts():
    net = AlexNet((3, 84, 84), fc_sizes=(2048, 512), dropout=(0.2, 0.2, 0.5, 0.5, 0.5))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [10, 8, 2]
    fcs = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert fcs[0].in_features == 256 * 7 * 7 and net.out_dim == 512
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.2, 0.2, 0.5, 0.5, 0.5]


def test_alexnet_on_tiny_digits_fails_at_build_time():
    with pytest.raises(ConfigError, match=r"alexnet needs inputs of at least 12×12 pixels; the stream gives 8×8"):
        AlexNet((1, 8, 8))
    with pytest.raises(ConfigError, match="image inputs"):
        AlexNet((784,))


def test_resnet18_blip_shapes():
    net = ResNet((3, 84, 84), mul=1.5)
    assert net.out_dim == 768 and net(torch.zeros(2, 3, 84, 84)).shape == (2, 768)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].stride == (2, 2) and convs[0].kernel_size == (3, 3) and all(c.bias is None for c in convs)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert all(not m.affine for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert _layer_types(net) <= set(ALLOWED)


def test_resnet_avg4_keeps_the_top_left_window_of_6x6():
    net = ResNet((3, 84, 84), mul=0.25, pool="avg4").eval()
    x = torch.randn(2, 3, 84, 84)
    maps = net.features(x)
    assert maps.shape[-2:] == (6, 6)
    assert torch.allclose(net(x), maps[:, :, :4, :4].mean((2, 3)), atol=1e-6)


def test_resnet18_reduced_is_gem_shape():
    net = ResNet((3, 32, 32), base_width=20, stem_stride=1, bn_affine=True, pool="avg4")
    assert net.out_dim == 160 and sum(p.numel() for p in net.parameters()) == 1_093_140  # GEM's 1.09 M (no head)
    assert ResNet((3, 84, 84), base_width=20, stem_stride=1, bn_affine=True, pool="avg4").out_dim == 640
    with pytest.raises(ConfigError, match="avg4 needs a last feature map of at least 4×4"):
        ResNet((1, 8, 8), base_width=20, stem_stride=1, pool="avg4")


def test_batchnorm_statistics_frozen_after_first_task():
    net = ResNet((3, 32, 32), mul=0.125, freeze_bn_after_first_task=True)
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    net.start_task(0)
    net.train()
    net(torch.randn(4, 3, 32, 32))
    learnt = bn.running_mean.clone()
    assert not torch.equal(learnt, torch.zeros_like(learnt))
    net.start_task(1)
    net.train()  # Lightning calls train() at every fit and after every validation
    net(torch.randn(4, 3, 32, 32) + 5)
    assert torch.equal(bn.running_mean, learnt) and net.training and not bn.training
    unfrozen = ResNet((3, 32, 32), mul=0.125)
    unfrozen.start_task(1)
    assert next(m for m in unfrozen.modules() if isinstance(m, nn.BatchNorm2d)).training


@pytest.mark.parametrize("model, shape, out_dim", [("alexnet", (3, 32, 32), 2048), ("alexnet84", (3, 84, 84), 512),
                                                    ("resnet18", (3, 84, 84), 512),
                                                    ("resnet18_reduced", (3, 32, 32), 160)])
def test_model_configs_build(model, shape, out_dim):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}"])
    net = hydra.utils.instantiate(cfg.model, input_shape=shape, task_classes=[5, 5], n_shared_classes=10)
    assert net.trunk.out_dim == out_dim and net(torch.zeros(2, *shape), 1).shape == (2, 5)


@pytest.mark.parametrize("head", ["multi", "shared"])
def test_xavier_uniform_linear_init_draws_every_linear_layer_as_gem_and_bcl(head):
    """model.linear_init=xavier_uniform: every Linear layer, heads included, within ±√(6/(fan_in+fan_out)) with
    zero biases, spread over the range (not PyTorch's narrower ±1/√fan_in); copies made for other tasks too."""
    from cl.models.mlp import MLP
    from cl.models.network import TaskNetwork
    from cl.models.network import reinitialized_copy

    torch.manual_seed(0)
    net = TaskNetwork(lambda input_shape: MLP(input_shape, hidden_sizes=[128, 128]), (1, 28, 28), [10, 10],
                      head=head, n_shared_classes=10, linear_init="xavier_uniform")
    layers = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert len(layers) == 3 + (head == "multi")
    for trunk in (net.trunk, reinitialized_copy(net.trunk, "xavier_uniform")):
        for m in [m for m in trunk.modules() if isinstance(m, nn.Linear)]:
            bound = (6.0 / (m.in_features + m.out_features)) ** 0.5
            w = m.weight.detach().abs()
            assert float(w.max()) <= bound and float(w.max()) > 0.95 * bound and float(w.mean()) > 0.4 * bound
            assert torch.count_nonzero(m.bias) == 0
    default = TaskNetwork(lambda input_shape: MLP(input_shape, hidden_sizes=[128]), (1, 28, 28), [10])
    first = default.trunk[1]
    assert float(first.weight.detach().abs().max()) <= 1 / 784 ** 0.5 and torch.count_nonzero(first.bias) > 0
