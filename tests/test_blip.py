"""BLIP: the fast Fisher against per-sample autograd, the official 1/B² scale, bit growth, the projection box,
zero forgetting at full capacity, export round trip, bits over tasks and resume, and the DDP all-reduce."""
from __future__ import annotations

import copy
import json
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning import Callback
from torch import nn

from cl.approaches.isolation.blip import BLIP
from cl.blip.export import export, load
from cl.stats.fisher import FisherSettings, estimate_fisher, sample_labels, squared_gradient_sums
from cl.blip.quant import QuantSettings, TrunkQuantizer, bit_growth, quantize, state_key
from cl.models.network import TaskNetwork
from data.device_stream import DeviceStream
from data.stream import InputTransform, Split, Stream, Task
from tests.conftest import compose_config, config_options, run_pipeline
from tests.test_pipeline import CrashOnFit


# --- the Fisher ---------------------------------------------------------------------------------------------------
class ConvTrunk(nn.Sequential):
    """Conv with bias, stride and padding; conv without bias; an in-place ReLU; linear with and without bias."""

    def __init__(self):
        super().__init__(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(3, 4, 2, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 6), nn.ReLU(), nn.Linear(6, 5, bias=False))


def per_sample_loop(trunk: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0):
    """Σ_i (scale · ∂ℓ_i/∂θ)² with one autograd call per sample: the slow reference."""
    params = {n: p for n, p in trunk.named_parameters() if not n.startswith("3.")}  # BatchNorm is not quantized
    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(len(x)):
        loss = F.cross_entropy(head(trunk(x[i:i + 1])), y[i:i + 1])
        for (n, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values()))):
            sums[n] += (scale * g) ** 2
    return sums


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_fast_fisher_matches_a_per_sample_autograd_loop(dtype, tolerance):
    """float64: every element within `tolerance`; float32: the relative error of the whole tensor (single
    elements carry float32 rounding of the forward pass, ~1e-5 after squaring)."""
    torch.manual_seed(0)
    trunk, head = ConvTrunk().to(dtype).eval(), nn.Linear(5, 3).to(dtype)
    x, noise = torch.randn(12, 2, 8, 8, dtype=dtype), torch.rand(12)
    layers = {n: m for n, m in trunk.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    fast, count = squared_gradient_sums(layers, lambda v: head(trunk(v)), [(x[:7], noise[:7]), (x[7:], noise[7:])])
    y = sample_labels(head(trunk(x)), noise)
    slow = per_sample_loop(trunk, head, x, y)
    assert count == 12 and set(fast) == set(slow)
    for name in slow:
        if dtype == torch.float64:
            relative = ((fast[name] - slow[name]).abs() / slow[name].abs().clamp(min=1e-30)).max()
        else:
            relative = (fast[name] - slow[name]).norm() / slow[name].norm()
        assert relative <= tolerance, name


def test_fisher_has_the_official_scale():
    """The official estimate: per-sample gradients of the batch-MEAN loss (labels sampled), squared, summed,
    divided by the sample count: our Fisher must equal it (so F_prior means the same)."""
    torch.manual_seed(1)
    trunk, head = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)), nn.Linear(4, 3)
    model = nn.Sequential(trunk, head)
    x = torch.randn(50, 1, 4, 4, dtype=torch.float32)
    settings = FisherSettings(num_samples=40, batch_size=20)
    layers = {"1": trunk[1], "3": trunk[3]}
    torch.manual_seed(7)
    ours = estimate_fisher(model, layers, model, x, settings)

    torch.manual_seed(7)
    chosen, noise = torch.randperm(50)[:40], torch.rand(40)
    xs = x[chosen]
    params = dict(trunk.named_parameters())
    official = {n: torch.zeros_like(p) for n, p in params.items()}
    for start in range(0, 40, 20):  # batches of B = 20; per-sample gradients of the mean loss (÷B)
        xb, nb = xs[start:start + 20], noise[start:start + 20]
        yb = sample_labels(model(xb), nb)
        for i in range(20):
            loss = F.cross_entropy(model(xb[i:i + 1]), yb[i:i + 1]) / 20
            for n, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
                official[n] += g ** 2
    for n in official:
        torch.testing.assert_close(ours[n], official[n] / 40, rtol=1e-5, atol=0)


# --- bits -----------------------------------------------------------------------------------------------------------
def test_bit_growth_matches_a_hand_computation():
    mean = torch.tensor([1.0, 1.0, 1.0, 2.0, 1.0])
    task = torch.tensor([15.0, 1.0, 0.5, 14.0, 1e9])
    t = torch.tensor([0, 0, 0, 1, 0])
    # t=0: new mean (F̄+F)/2: 8 → ½·log2 8 = 1.5 → 2 bits; 1 → 0; 0.75 → negative → 0
    # t=1: (2·2+14)/3 = 6 → ½·log2 3 = 0.79 → 1 bit; 1e9: ½·log2(5e8) = 14.45 → 15
    grown = torch.stack([bit_growth(mean[i:i + 1], task[i:i + 1], int(t[i])) for i in range(5)]).flatten()
    assert grown.tolist() == [2, 0, 0, 1, 15]


def test_freeze_grows_bits_requantizes_and_updates_the_running_mean():
    layer = nn.Linear(2, 1)
    quantizer = TrunkQuantizer(nn.Sequential(layer), QuantSettings(F_prior=1.0, max_bit=4, bound_scale=6.0))
    bound = 6.0 / math.sqrt(2)
    weight_state = quantizer.state[state_key("0.weight")]
    assert weight_state.bound == pytest.approx(bound) and weight_state.fisher.tolist() == [[2.0, 2.0]]  # F_prior·fan_in
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.3 * bound, 0.3 * bound]]))
        layer.bias.fill_(0.4)
    # weight: F = 30 → new mean 16 → IG 1.5 → 2 bits: 0.3 → round(1.2)/4 = 0.25; F = 2 → 0 bits → 0
    # bias: F = 1e12 → capped at max_bit 4: 0.4 → round(6.4)/16 = 0.375
    quantizer.freeze({"0.weight": torch.tensor([[30.0, 2.0]]), "0.bias": torch.tensor([1e12])}, t=0)
    assert weight_state.bits.tolist() == [[2, 0]] and weight_state.bits.dtype == torch.uint8
    torch.testing.assert_close(layer.weight.data, torch.tensor([[0.25 * bound, 0.0]]))
    assert layer.bias.item() == 0.375 and quantizer.state[state_key("0.bias")].bits.item() == 4
    assert torch.equal(weight_state.prev, layer.weight.data)
    assert weight_state.fisher.tolist() == [[16.0, 2.0]]
    assert quantizer.capacity() == pytest.approx((2 + 4) / (4 * 3))


def test_quantize_sets_zero_bit_parameters_to_zero():
    value = torch.tensor([0.3, -0.7, 0.5])
    assert quantize(value, torch.tensor([0, 1, 3], dtype=torch.uint8), 1.0).tolist() == [0.0, -0.5, 0.5]


@pytest.mark.parametrize("init,prior_fan", [("normal", "fan_in"), ("orthogonal", "max"), ("default", "fan_in")])
def test_init_keeps_weights_in_range(init, prior_fan):
    trunk = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 200))
    quantizer = TrunkQuantizer(trunk, QuantSettings(init=init, prior_fan=prior_fan))
    quantizer.initialize()
    fans = {"0": 27, "2": 128} if prior_fan == "fan_in" else {"0": 27, "2": 200}  # max(fan_in, fan_out)
    for layer, fan in fans.items():
        state = quantizer.state[state_key(f"{layer}.weight")]
        assert state.bound == pytest.approx(6 / math.sqrt(fan))
        assert state.fisher[0].flatten()[0].item() == pytest.approx(1e-15 * fan)
        assert trunk.get_submodule(layer).weight.abs().max() <= state.bound


# --- training through Lightning ------------------------------------------------------------------------------------
def gaussian_stream(n_tasks: int, n: int = 256, dim: int = 10) -> Stream:
    g = torch.Generator().manual_seed(0)
    tasks = []
    for t in range(n_tasks):
        w = torch.randn(dim, 3, generator=g)
        splits = []
        for _ in range(3):
            x = torch.randn(n, dim, generator=g)
            splits.append(Split(x, (x @ w).argmax(1)))
        tasks.append(Task(f"t{t}", [0, 1, 2], *splits, transform=InputTransform()))
    return Stream("gauss", tasks, (dim,))


def blip_on(stream: Stream, **kwargs) -> tuple[BLIP, DeviceStream]:
    from cl.models.mlp import MLP

    torch.manual_seed(0)
    net = TaskNetwork(lambda input_shape: MLP(input_shape, (16,)), stream.input_shape, [3] * len(stream))
    approach = BLIP(net, lr=0.2, batch_size=32, fisher=FisherSettings(num_samples=200, batch_size=50), **kwargs)
    approach.setup_stream(stream)
    return approach, DeviceStream(stream, "cpu", shared_head=False)


class BoxCheck(Callback):
    """After every optimizer step of tasks ≥ 1: each quantized parameter within its box around `prev`."""

    def __init__(self):
        self.steps, self.at_edge = 0, 0

    def on_train_batch_end(self, trainer, pl_module, *args):
        if pl_module.task_id == 0:
            return
        max_bit = pl_module.quantizer.settings.max_bit
        for _, param, state in pl_module.quantizer.named_states():
            half_width = state.bound * torch.exp2(-state.bits.double())
            distance = (param.double() - state.prev.double()).abs()
            assert (distance <= half_width * (1 + 1e-6)).all()
            assert (param.abs() <= state.bound * (1 - 2.0 ** -max_bit) * (1 + 1e-7)).all()
            self.at_edge += int(((distance - half_width).abs() <= half_width * 1e-5)[state.bits > 0].sum())
        self.steps += 1


def test_every_step_of_later_tasks_stays_in_the_box(fit_task):
    approach, data = blip_on(gaussian_stream(3), F_prior=1e-9)
    check = BoxCheck()
    for t in range(3):
        fit_task(approach, data, t, epochs=3, callbacks=[check], validate=True)
    assert check.steps == 2 * 3 * 8 and check.at_edge > 0  # the projection was active, not vacuous


def test_full_capacity_after_task_one_means_zero_forgetting(fit_task):
    approach, data = blip_on(gaussian_stream(2), F_prior=1e-30)
    fit_task(approach, data, 0, epochs=3, validate=True)
    for _, _, state in approach.quantizer.named_states():
        assert (state.bits == 20).all()
    x = data.source(0, "test").x
    before = approach(x, 0).detach()
    fit_task(approach, data, 1, epochs=5, validate=True)
    torch.testing.assert_close(approach(x, 0).detach(), before, rtol=1e-5, atol=1e-5)


def test_capacity_is_reported(tmp_path, fit_task):
    approach, data = blip_on(gaussian_stream(1), F_prior=1e-9)
    fit_task(approach, data, 0, epochs=3, validate=True)
    info = approach.approach_info()
    assert 0 < info["capacity"] <= 1 and set(info["bits_per_layer"]) == {"fc1 10→16"}
    assert sum(info["bits_per_layer"]["fc1 10→16"]["histogram"]) == 10 * 16 + 16


def test_cl_state_is_nine_bytes_per_parameter(fit_task):
    approach, data = blip_on(gaussian_stream(2), F_prior=1e-9)
    quantized = sum(p.numel() for p in approach.quantizer.params.values())
    for t in range(2):
        fit_task(approach, data, t, epochs=1, validate=True)
        assert approach.cl_state_bytes() == 9 * quantized


# --- the pipeline: bits over tasks, resume, export ------------------------------------------------------------------
THREE_TASKS = ["debug=default", "stream.tasks=[[0,1],[2,3],[4,5]]", "approach.lr=0.1"]


def checkpoint_bits(run_dir, t: int) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / f"task_{t}.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.endswith(".bits")}


def test_bits_only_grow_and_resume_keeps_them(tmp_path, monkeypatch):
    full = run_pipeline(THREE_TASKS, tmp_path / "full")
    bits = [checkpoint_bits(tmp_path / "full", t) for t in range(3)]
    for earlier, later in zip(bits, bits[1:]):
        assert all((later[k] >= earlier[k]).all() for k in earlier)
    assert any((bits[2][k] > bits[0][k]).any() for k in bits[0])
    assert full["approach_info"]["capacity"] > 0 and (tmp_path / "full" / "bits.png").exists()

    crash = CrashOnFit(monkeypatch, crash_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(THREE_TASKS, tmp_path / "cut")
    monkeypatch.setattr(pl.Trainer, "fit", crash.fit)
    resumed = run_pipeline([*THREE_TASKS, "resume=true"], tmp_path / "cut")
    assert resumed["acc_matrix"] == full["acc_matrix"]
    assert resumed["approach_info"] == full["approach_info"]
    for k, v in checkpoint_bits(tmp_path / "cut", 2).items():
        assert torch.equal(v, bits[2][k])


def test_export_round_trip_gives_identical_predictions(tmp_path):
    run_pipeline(["debug=default", "stream.tasks=[[0,1],[2,3]]"], tmp_path)
    out, size, float32_size = export(tmp_path, tmp_path / "model.blip")
    assert size < float32_size
    net = load(out)
    state = torch.load(tmp_path / "checkpoints" / "task_1.ckpt", weights_only=False)["state_dict"]
    original = copy.deepcopy(net)
    original.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
    x = torch.rand(64, 1, 8, 8)
    for t in range(2):
        assert torch.equal(net(x, t), original.eval()(x, t))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["approach"] == "blip"


# --- every shipped model ---------------------------------------------------------------------------------------------
MODEL_INPUTS = {"mlp": (1, 28, 28), "alexnet": (3, 32, 32), "alexnet84": (3, 84, 84), "resnet18": (3, 84, 84),
                "resnet18_reduced": (3, 32, 32)}


SLOW_MODELS = {"alexnet84", "resnet18", "resnet18_reduced", "alexnet_imagenet"}  # tens of millions of parameters, or deep convs


@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW_MODELS else m
                                   for m in config_options("model")])
def test_blip_quantizes_every_shipped_model(model, tmp_path):
    """Every Linear/Conv2d of the trunk is quantized (heads are not); a Fisher + freeze puts it on its grid."""
    import hydra

    cfg = compose_config([f"model={model}"], tmp_path)
    shape = MODEL_INPUTS.get(model, (3, 32, 32))
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model, input_shape=shape, task_classes=[3, 3], n_shared_classes=None)
    approach = hydra.utils.instantiate(cfg.approach, net=net, fisher=FisherSettings(num_samples=4, batch_size=2))
    expected = {n for n, m in net.trunk.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert {name for name, _ in approach.quantizer.layers} == expected
    fisher = estimate_fisher(net, dict(approach.quantizer.layers), lambda v: approach(v, 0), torch.randn(6, *shape),
                             approach.fisher_settings)
    assert all(torch.isfinite(f).all() and (f >= 0).all() for f in fisher.values())
    approach.quantizer.freeze(fisher, 0)
    for _, param, state in approach.quantizer.named_states():
        assert torch.equal(param.data, quantize(param.data, state.bits, state.bound))


# --- bits.png ---------------------------------------------------------------------------------------------------------
def bit_histories(n_layers: int, n_tasks: int, max_bit: int = 20) -> list[dict[str, list[int]]]:
    """Histograms that spread each layer's parameters over the bits, more of them frozen after each task."""
    history = []
    for t in range(n_tasks):
        hist = {}
        for i in range(n_layers):
            weights = [0.5 ** (b / (t + 2)) for b in range(max_bit + 1)]
            hist[f"fc{i + 1} {100 + i}→100"] = [round(1000 * (i + 1) * w) for w in weights]
        history.append(hist)
    return history


@pytest.mark.parametrize("n_layers", [1, 10])
def test_bits_png_writes_its_numbers_on_the_cells_without_warnings(n_layers, monkeypatch):
    import warnings

    from cl.outputs import bits_plot as plot

    figures = []
    monkeypatch.setattr(plot, "figure_png", lambda fig: figures.append(fig) or b"png")
    history, max_bit = bit_histories(n_layers, 5), 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Tight layout not applied", a singular colour norm
        assert plot.bits_png(history, max_bit) == b"png"
        [fig] = figures
        fig.canvas.draw()
    ax_bits, ax_tasks, bar_bits, _ = fig.axes
    counts = history[-1]["fc1 100→100"]
    shares = [plot.share_text(100 * c / sum(counts)) for c in counts]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax_bits.texts}
    assert len(cells) == n_layers * (max_bit + 1)  # every bit count of every layer carries its share
    assert [cells[(0, b)] for b in range(max_bit + 1)] == shares and shares[0] == "12"
    assert len(ax_tasks.texts) == n_layers * 5
    first_layer = [t.get_text() for t in ax_tasks.texts if round(t.get_position()[1]) == 0]
    bits = range(max_bit + 1)
    expected = [f"{100 * sum(b * c for b, c in zip(bits, h['fc1 100→100'])) / (max_bit * sum(h['fc1 100→100'])):.1f}"
                for h in history]
    assert first_layer == expected
    assert len(bar_bits.get_xticks()) >= 4  # a readable colour scale, not two decades
    assert [t.get_text() for t in ax_bits.get_yticklabels()][0].startswith("fc1 100→100\nmean ")
    plot.pyplot().close(fig)
