"""HAT: units whose cumulative mask is 1 keep their incoming weights (and old tasks their outputs) bit for bit, the
gradient scales 1 − min(a_out, a_in), the s schedule and the embedding-gradient compensation, the sparsity
regularizer, checkpoints into a fresh approach, impossible combinations, and runs on every image model."""
from __future__ import annotations

import math

import pytest
import torch
from pytorch_lightning import Callback
from torch import nn

from cl.approaches.isolation.hat import HAT, annealed_s
from cl.errors import ConfigError
from cl.models.alexnet import AlexNet
from cl.models.mlp import MLP
from cl.models.resnet import ResNet
from cl.models.network import TaskNetwork
from data.device_stream import DeviceStream
from data.stream import InputTransform, Split, Stream, Task
from tests.conftest import run_pipeline
from tests.test_streams_pipeline import MODELS as TINY_MODELS


def synthetic_stream(n_tasks: int, input_shape: tuple[int, ...], n: int = 64, n_classes: int = 3) -> Stream:
    """Random inputs labelled by a random linear map per task (learnable, so training moves the weights)."""
    g = torch.Generator().manual_seed(0)
    dim = math.prod(input_shape)
    tasks = []
    for t in range(n_tasks):
        w = torch.randn(dim, n_classes, generator=g)
        splits = []
        for _ in range(3):
            x = torch.randn(n, *input_shape, generator=g)
            splits.append(Split(x, (x.flatten(1) @ w).argmax(1)))
        tasks.append(Task(f"t{t}", list(range(n_classes)), *splits, transform=InputTransform()))
    return Stream("synthetic", tasks, input_shape)


TRUNKS = {  # (trunk, input shape): small versions of the shipped models
    "mlp": (lambda input_shape: MLP(input_shape, (16, 12)), (10,)),
    "alexnet": (lambda input_shape: AlexNet(input_shape, mul=0.125, fc_sizes=(16, 16)), (3, 32, 32)),
    "resnet18": (lambda input_shape: ResNet(input_shape, mul=0.125, freeze_bn_after_first_task=True), (3, 16, 16)),
}


def hat_on(trunk, input_shape, n_tasks: int = 2, **kwargs) -> tuple[HAT, DeviceStream]:
    stream = synthetic_stream(n_tasks, input_shape)
    torch.manual_seed(0)
    net = TaskNetwork(trunk, input_shape, [3] * n_tasks)
    approach = HAT(net, **{"lr": 0.1, "batch_size": 32, **kwargs})
    approach.setup_stream(stream)
    return approach, DeviceStream(stream, "cpu", shared_head=False)


def expected_scale(approach: HAT, w, shape) -> torch.Tensor:
    """1 − min(a_out[i], a_in[j]) element by element (first layer and biases: 1 − a_out[i]), by brute force."""
    per_layer = approach.cumulative_mask.split(approach.unit_sizes)
    a_out = per_layer[w.output]
    scale = torch.empty(shape)
    for i in range(shape[0]):
        for j in range(shape[1] if len(shape) > 1 else 1):
            used = a_out[i] if len(shape) == 1 or w.input is None else min(a_out[i], per_layer[w.input][j // w.repeat])
            scale[(i, j) if len(shape) > 1 else i] = 1 - used
    return scale


def frozen_entries(approach: HAT, w, param: torch.Tensor) -> torch.Tensor:
    """Entries into a used unit (a^{≤t} = 1) from a used unit (or from the input): they must not move."""
    per_layer = approach.cumulative_mask.split(approach.unit_sizes)
    into_used = per_layer[w.output] == 1
    if param.dim() == 1:
        return into_used
    from_used = torch.ones(param.shape[1], dtype=torch.bool) if w.input is None else \
        per_layer[w.input][torch.arange(param.shape[1]) // w.repeat] == 1
    frozen = into_used[:, None] & from_used[None, :]
    return frozen.view(*frozen.shape, *(1,) * (param.dim() - 2)).expand_as(param)


# --- the protection guarantee ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [k if k != "resnet18" else pytest.param(k, marks=pytest.mark.slow) for k in TRUNKS])
def test_units_with_cumulative_mask_one_keep_their_incoming_weights(kind, fit_task):
    """Train task 1, force a binary task-1 mask (= the cumulative mask), train task 2: every weight between two
    used units (first layer: into a used unit) and every bias of a used unit is unchanged bit for bit, and so are
    task 1's outputs; the weights HAT leaves free did move."""
    trunk, shape = TRUNKS[kind]
    approach, data = hat_on(trunk, shape)
    fit_task(approach, data, 0)
    used = torch.rand(approach.cumulative_mask.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    with torch.no_grad():
        approach.embedding[0] = torch.where(used, 6.0, -6.0)
        approach.cumulative_mask.copy_(used.float())
    x = data.source(0, "test").x
    before_out = approach.eval()(x, 0).detach()
    trunk_params = dict(approach.net.trunk.named_parameters())
    frozen = {f"{w.layer}.{suffix}": frozen_entries(approach, w, trunk_params[f"{w.layer}.{suffix}"])
              for w in approach.masked_weights for suffix in ("weight", "bias") if f"{w.layer}.{suffix}" in trunk_params}
    before = {name: trunk_params[name].detach().clone() for name in frozen}

    fit_task(approach.train(), data, 1, epochs=2)
    assert torch.equal(approach.eval()(x, 0), before_out)
    moved = 0
    for name, keep in frozen.items():
        assert torch.equal(trunk_params[name][keep], before[name][keep]), name
        moved += int((trunk_params[name][~keep] != before[name][~keep]).sum())
    assert moved > 0


def test_gradient_scale_is_one_minus_min_of_the_masks():
    """Conv (first layer: 1 − a_out) → max-pool → flatten → Linear (reads each channel's mask at its 2×2
    positions) → Linear, with hand-made cumulative masks; gradients of ones come out as the scales."""
    class Trunk(nn.Sequential):
        def __init__(self, input_shape):
            super().__init__(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 4), nn.ReLU(),
                             nn.Linear(4, 5), nn.ReLU())
            self.out_dim = 5

        def layers_in_order(self):  # what HAT asks a trunk for (cl/models/mlp.py has the same)
            return list(self.named_children())

    approach, _ = hat_on(Trunk, (2, 6, 6))
    assert [(w.input, w.repeat) for w in approach.masked_weights] == [(None, 1), (0, 4), (1, 1)]
    assert [layer.gate for layer in approach.unit_layers] == ["2", "5", "7"]
    approach.cumulative_mask.copy_(torch.tensor([1.0, 0.0, 0.3, 0.0, 1.0, 0.6, 1.0, 0.2, 1.0, 0.0, 0.9, 0.5]))
    approach.task_id = 1
    approach.on_train_start()
    modules = dict(approach.net.trunk.named_modules())
    for p in approach.net.trunk.parameters():
        p.grad = torch.ones_like(p)
    approach.protect_gradients()
    for w in approach.masked_weights:
        weight, bias = modules[w.layer].weight, modules[w.layer].bias
        scale = expected_scale(approach, w, weight.shape[:2])
        assert torch.allclose(weight.grad, scale.view(*scale.shape, *(1,) * (weight.dim() - 2)).expand_as(weight))
        assert torch.allclose(bias.grad, expected_scale(approach, w, bias.shape))


def test_resnet_block_weights_connect_the_masks_that_feed_them():
    """conv1 and the shortcut conv read the block input's mask; conv2 reads conv1's; conv2 and the shortcut conv
    share the block output's units (masked after the residual sum)."""
    approach, _ = hat_on(lambda input_shape: ResNet(input_shape, base_width=2, blocks=(1, 1)), (3, 8, 8))
    gates = [layer.gate for layer in approach.unit_layers]
    assert gates == ["features.2", "features.3.relu1", "features.3.relu2", "features.4.relu1", "features.4.relu2"]
    connects = {w.layer: (w.input, w.output) for w in approach.masked_weights}
    assert connects == {"features.0": (None, 0), "features.3.conv1": (0, 1), "features.3.conv2": (1, 2),
                        "features.4.conv1": (2, 3), "features.4.conv2": (3, 4), "features.4.shortcut.0": (2, 4)}


# --- s, the embedding compensation, the regularizer --------------------------------------------------------------------
class RecordS(Callback):
    def __init__(self):
        self.s: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.s.append(pl_module.s)


def test_s_anneals_from_one_over_smax_to_smax_within_each_epoch(fit_task):
    assert annealed_s(0, 5, 400) == 1 / 400 and annealed_s(4, 5, 400) == pytest.approx(400)
    assert annealed_s(2, 5, 400) == pytest.approx(1 / 400 + (400 - 1 / 400) / 2)
    approach, data = hat_on(*TRUNKS["mlp"])
    record = RecordS()
    fit_task(approach, data, 0, epochs=2, callbacks=[record])
    assert record.s == pytest.approx([1 / 400, 400] * 2)  # 64 samples, batch 32: two batches per epoch
    assert approach.eval()(data.source(0, "test").x, 0) is not None and approach.s == 400


def test_embedding_gradient_is_compensated_to_the_smax_slope():
    """After compensation, ∂σ(s·e)/∂e = s_max·σ'(e) whatever s; beyond |s·e| = thres_cosh, cosh(s·e) is taken at
    ±thres_cosh. Only the current task's row changes."""
    approach, _ = hat_on(*TRUNKS["mlp"])
    units = approach.embedding.shape[1]
    e = torch.linspace(-1.0, 1.0, units)
    approach.task_id, approach.s = 1, 7.0
    with torch.no_grad():
        approach.embedding[1] = e
    torch.sigmoid(approach.s * approach.embedding[1]).sum().backward()
    approach.compensate_embedding_gradient()
    assert torch.allclose(approach.embedding.grad[1], 400 * torch.sigmoid(e) * torch.sigmoid(-e), rtol=1e-4)

    approach.s = 100.0  # |s·e| up to 100: clamped to 50 inside cosh
    approach.embedding.grad = torch.ones_like(approach.embedding)
    approach.compensate_embedding_gradient()
    factor = 400 / 100 * (torch.cosh((100 * e.double()).clamp(-50, 50)) + 1) / (torch.cosh(e.double()) + 1)
    assert torch.allclose(approach.embedding.grad[1].double(), factor, rtol=1e-5)
    assert (approach.embedding.grad[0] == 1).all()


def test_sparsity_regularizer_on_hand_made_masks():
    approach, _ = hat_on(lambda input_shape: MLP(input_shape, (4,)), (10,))
    masks = torch.tensor([[0.2, 0.4, 1.0, 1.0]])
    assert approach.sparsity(masks) == pytest.approx(2.6 / 4)  # first task: the plain mean of the masks
    approach.cumulative_mask.copy_(torch.tensor([1.0, 0.0, 0.5, 0.0]))
    assert approach.sparsity(masks) == pytest.approx((0.4 + 0.5 + 1.0) / (0 + 1 + 0.5 + 1))
    approach.cumulative_mask.fill_(1.0)
    assert approach.sparsity(masks) == 0  # no free unit left: nothing to regularize


# --- state, errors, every model ------------------------------------------------------------------------------------------
def test_state_loads_into_a_fresh_approach_and_counts_embeddings_and_masks(fit_task):
    approach, data = hat_on(*TRUNKS["mlp"], n_tasks=3)
    fit_task(approach, data, 0)
    assert approach.cumulative_mask.sum() > 0
    fresh, _ = hat_on(*TRUNKS["mlp"], n_tasks=3)
    fresh.load_state_dict(approach.state_dict())
    x = data.source(0, "test").x
    for t in range(3):
        assert torch.equal(fresh.eval()(x, t), approach.eval()(x, t))
    units = 16 + 12
    assert approach.cl_state_bytes() == 4 * (3 * units + units)
    info = approach.approach_info()
    assert 0 < info["used_units"] <= 1 and set(info["used_units_per_layer"]) == {"2", "4"}


def test_a_batch_mixing_tasks_masks_each_sample_with_its_own_task():
    approach, data = hat_on(*TRUNKS["mlp"], n_tasks=3)
    x = data.source(0, "test").x[:6]
    task = torch.tensor([0, 1, 2, 2, 1, 0])
    mixed = approach.eval()(x, task)
    for t in range(3):
        assert torch.allclose(mixed[task == t], approach(x[task == t], t), atol=1e-6)


def test_trunk_without_hidden_layer_stops_with_one_line():
    with pytest.raises(ConfigError, match="no hidden layer to mask") as error:
        hat_on(lambda input_shape: MLP(input_shape, ()), (10,))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("override,message", [("model.head=shared", "model.head=multi"),
                                               ("approach.weight_decay=0.01", "weight_decay=0")])
def test_impossible_combinations_stop_before_training(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        run_pipeline(["approach=hat", override, "debug=default"], tmp_path)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_resume_from_inside_a_task_gives_the_same_results(tmp_path, monkeypatch):
    """Stopped in the middle of task 2's second epoch (a checkpoint every step), then resumed: the s schedule,
    the embedding and the cumulative masks continue exactly."""
    overrides = ["approach=hat", "trainer.max_epochs=2", "+trainer.limit_train_batches=4", "approach.lr=0.1",
                 "stream.tasks=[[0,1],[2,3],[4,5]]", "checkpoint_every_n_steps=1", "eval_max_samples=200"]
    full = run_pipeline(overrides, tmp_path / "full")

    def stop(approach, outputs, batch, batch_idx):
        if approach.task_id == 1 and approach.current_epoch == 1 and batch_idx == 1:
            raise KeyboardInterrupt("simulated kill after the step's checkpoint")

    with monkeypatch.context() as patch:
        patch.setattr(HAT, "on_train_batch_end", stop, raising=False)
        with pytest.raises((KeyboardInterrupt, SystemExit)):
            run_pipeline(overrides, tmp_path / "cut")
    assert (tmp_path / "cut" / "checkpoints" / "mid_task.ckpt").exists()
    resumed = run_pipeline([*overrides, "resume=true"], tmp_path / "cut")
    assert resumed["acc_matrix"] == full["acc_matrix"] and resumed["approach_info"] == full["approach_info"]
    states = [torch.load(tmp_path / run / "checkpoints" / "task_2.ckpt", weights_only=False)["state_dict"]
              for run in ("full", "cut")]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


# the pipeline on digits5 with the MLP runs in tests/test_pipeline.py (every approach in debug mode)
IMAGE_MODELS = {"alexnet": "cifar_alt", "alexnet84": "miniimagenet20", "resnet18": "miniimagenet20",
                "resnet18_reduced": "cifar_alt"}


@pytest.mark.parametrize("model", [m if m == "alexnet" else pytest.param(m, marks=pytest.mark.slow)
                                   for m in IMAGE_MODELS])
def test_hat_runs_on_every_image_model(model, fixture_data, tmp_path):
    overrides = [f"stream={IMAGE_MODELS[model]}", f"model={model}", "approach=hat", "approach.batch_size=8",
                 "debug=default", "eval_max_samples=16", "stream.max_tasks=2", f"paths.data_dir={fixture_data}",
                 *TINY_MODELS[model]]
    results = run_pipeline(overrides, tmp_path)
    assert results["complete"] and 0 < results["approach_info"]["used_units"] <= 1
