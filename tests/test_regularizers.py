"""The importance regularizers (EWC, online EWC, SI, MAS, MAS-local, IMM): the statistics against per-sample autograd
loops and brute force, the folded penalty, SI's path integral, the IMM merges, MAS keyed by name, state size and
loading into a fresh approach, and on a 2-task problem that each keeps task 1 better than plain SGD."""
from __future__ import annotations

import itertools
import logging

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from cl.stats import kernels
from cl.approaches.regularization.ewc import EWC
from cl.approaches.regularization.mas import MAS
from cl.approaches.baselines.sgd import SGD
from cl.approaches.regularization.si import SI
from cl.approaches.regularization.imm_mean import IMMMean
from cl.approaches.regularization.imm_mode import IMMMode
from cl.approaches.regularization.mas_local import MASLocal
from cl.approaches.regularization.online_ewc import OnlineEWC
from cl.approaches.regularization import si_fused
from cl.approaches.regularization.ewc import FisherRegularizer
from cl.approaches.regularization.mas_local import followed_by_relu
from cl.approaches.regularization.regularizer import ImportanceRegularizer
from cl.errors import ConfigError
from cl.stats.importance import FisherOptions, fisher_diagonal, hebbian_omega, mas_omega, task_generator
from cl.models.mlp import MLP
from cl.models.network import TaskNetwork
from cl.stats.per_sample import sample_labels
from cl.run.skeleton import quiet_lightning
from data.device_stream import DeviceStream
from data.stream import InputTransform, Split, Stream, Task
from data.tensor_loader import BatchSource, TaskBatches

REGULARIZERS = [EWC, OnlineEWC, SI, MAS, MASLocal, IMMMean, IMMMode]


# --- a small network with every kind of regularized parameter ------------------------------------------------------
class ConvTrunk(nn.Sequential):
    """Conv with bias, stride and padding; BatchNorm (affine: no fast path); an in-place ReLU; conv without bias;
    linear."""

    def __init__(self, input_shape):
        super().__init__(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3), nn.ReLU(inplace=True),
                         nn.Conv2d(3, 4, 2, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5),
                         nn.ReLU())
        self.out_dim = 5


def conv_net(head: str = "shared") -> TaskNetwork:
    torch.manual_seed(0)
    net = TaskNetwork(ConvTrunk, (2, 6, 6), [3, 3], head=head, n_shared_classes=3).double()
    bn = net.trunk[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    return net


def inputs(n: int = 10) -> torch.Tensor:
    return torch.randn(n, 2, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def as_source(x: torch.Tensor, y: torch.Tensor | None = None, task: int = 0) -> BatchSource:
    return BatchSource(x, torch.zeros(len(x), dtype=torch.long) if y is None else y, task, lambda v: v)


def per_sample_gradients(net: TaskNetwork, names: list[str], x: torch.Tensor, objective) -> list[list[dict]]:
    """For each sample, for each of its objectives (objective(logits of one sample, i) -> list of scalars), the
    gradient of every named parameter: one autograd call per sample and objective, the slow reference."""
    params = dict(net.named_parameters())
    net.eval()
    out = []
    for i in range(len(x)):
        per_objective = []
        for loss in objective(net(x[i:i + 1], 0), i):
            grads = torch.autograd.grad(loss, [params[n] for n in names], retain_graph=True)
            per_objective.append(dict(zip(names, grads)))
        out.append(per_objective)
    return out


def assert_close(ours: dict, reference: dict):
    assert set(ours) == set(reference)
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-10, atol=1e-14, msg=name)


# --- statistics ----------------------------------------------------------------------------------------------------
def test_exact_fisher_matches_a_per_sample_autograd_loop():
    """Conv, BatchNorm (the non-factorized path), linear and the shared head: all get the exact Fisher."""
    approach = EWC(conv_net())
    names = list(approach.regularized)
    assert {"trunk.1.weight", "trunk.1.bias", "heads.0.weight"} <= set(names)
    x = inputs(12)
    torch.manual_seed(3)
    fisher = fisher_diagonal(approach.net, approach.stat_modules, approach.task_logits(0), as_source(x),
                             FisherOptions("exact", samples=None, batch_size=5))
    assert approach.net.training  # the estimate ran in eval mode and restored the mode
    noise = torch.rand(12, generator=task_generator()).double()

    def nll_of_sampled_label(logits, i):
        return [F.cross_entropy(logits, sample_labels(logits, noise[i:i + 1]))]

    grads = per_sample_gradients(approach.net, names, x, nll_of_sampled_label)
    assert_close(fisher, {n: sum(g[0][n] ** 2 for g in grads) / 12 for n in names})


@pytest.mark.parametrize("norm,per_sample", list(itertools.product(["l2", "l1", "vector"], [True, False])))
def test_mas_omega_matches_a_per_sample_autograd_loop(norm, per_sample):
    approach = MAS(conv_net(), norm=norm, omega_per_sample=per_sample, omega_batch_size=4)
    names = list(approach.regularized)
    x = inputs(10)
    omega = mas_omega(approach.net, approach.stat_modules, approach.task_logits(0), as_source(x), norm, per_sample, 4,
                      None)

    def objectives(logits, i):
        if norm == "vector":
            return [logits[0, j] for j in range(logits.shape[1])]
        return [logits.square().sum() if norm == "l2" else logits.abs().sum()]

    grads = per_sample_gradients(approach.net, names, x, objectives)
    if per_sample:  # (1/N) Σ_i Σ_objectives |g_i|
        reference = {n: sum(g[n].abs() for sample in grads for g in sample) / 10 for n in names}
    else:  # (1/N) Σ_batches Σ_objectives |Σ_{i∈batch} g_i|, batches of 4 in order
        batches = [range(0, 4), range(4, 8), range(8, 10)]
        reference = {n: sum(sum(grads[i][j][n] for i in b).abs() for b in batches for j in range(len(grads[0]))) / 10
                     for n in names}
    assert_close(omega, reference)


def brute_force_hebbian(x: torch.Tensor, y: torch.Tensor, conv: nn.Conv2d | None = None) -> dict[str, torch.Tensor]:
    """Ω_ij = mean over samples (and output positions) of |y_i·y_j|, one connection at a time."""
    if conv is None:
        weight = torch.zeros(y.shape[1], x.shape[1], dtype=x.dtype)
        for n, i, j in itertools.product(range(len(x)), range(y.shape[1]), range(x.shape[1])):
            weight[i, j] += abs(y[n, i] * x[n, j]) / len(x)
        return {"weight": weight, "bias": y.abs().mean(0)}
    weight = torch.zeros_like(conv.weight)
    (s,), (p,) = set(conv.stride), set(conv.padding)
    H, W = y.shape[2:]
    for n, o, c, kh, kw, oh, ow in itertools.product(range(len(x)), *map(range, conv.weight.shape), range(H), range(W)):
        ih, iw = oh * s - p + kh, ow * s - p + kw
        inside = 0 <= ih < x.shape[2] and 0 <= iw < x.shape[3]
        weight[o, c, kh, kw] += abs(y[n, o, oh, ow] * (x[n, c, ih, iw] if inside else 0.0)) / (len(x) * H * W)
    return {"weight": weight, "bias": y.abs().mean((0, 2, 3))}


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_mas_local_matches_brute_force(layer, relu):
    torch.manual_seed(0)
    module = nn.Linear(3, 4) if layer == "linear" else nn.Conv2d(2, 3, 2, stride=2, padding=1)
    model = nn.Sequential(module, nn.ReLU()) if relu else nn.Sequential(module, nn.Tanh())
    model.double()
    x = torch.randn(5, 3, dtype=torch.float64) if layer == "linear" else torch.randn(5, 2, 5, 5, dtype=torch.float64)
    fires = followed_by_relu(model)
    assert fires == ({"0"} if relu else set())
    omega = hebbian_omega(model, {"0": module}, model, as_source(x), fires, batch_size=2, samples=None)
    y = module(x).detach()
    expected = brute_force_hebbian(x, y.clamp(min=0) if relu else y, None if layer == "linear" else module)
    assert_close(omega, {f"0.{k}": v for k, v in expected.items()})


# --- the folded penalty ----------------------------------------------------------------------------------------------
def test_folded_penalty_equals_the_sum_of_its_terms_in_value_and_gradient():
    """Offline EWC with three terms: scale·Σ_k Σ F_k(θ − θ*_k)², folded into one quadratic; the value joins the loss,
    the gradient joins p.grad before the optimizer step."""
    approach = EWC(conv_net(), lamb=3.0).double()
    g = torch.Generator().manual_seed(2)
    shapes = {n: p.shape for n, p in approach.regularized.items()}
    terms = []
    for _ in range(3):
        term = approach.terms.add().double()
        term.importance.copy_({n: torch.rand(s, generator=g, dtype=torch.float64) * (torch.rand(s, generator=g) > 0.3)
                               for n, s in shapes.items()})
        term.anchor.copy_({n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in shapes.items()})
        terms.append(term)
    approach.tasks_consolidated.fill_(3)
    params = list(approach.regularized.values())
    naive = 1.5 * sum((t.importance[n] * (p - t.anchor[n]) ** 2).sum() for t in terms
                      for n, p in approach.regularized.items())
    expected = torch.autograd.grad(naive, params)
    torch.testing.assert_close(approach.penalty(), naive.detach(), rtol=1e-12, atol=0)
    task_gradient = [torch.randn_like(p) for p in params]
    for p, g_task in zip(params, task_gradient):
        p.grad = g_task.clone()
    approach.on_before_optimizer_step(None)
    for p, g_task, want in zip(params, task_gradient, expected):
        torch.testing.assert_close(p.grad, g_task + want, rtol=1e-12, atol=1e-14)
    importances = approach.importances()
    for name in approach.regularized:
        torch.testing.assert_close(importances[name], sum(t.importance[name] for t in terms))


# --- SI --------------------------------------------------------------------------------------------------------------
class QuadraticSI(SI):
    """SI whose task loss is ½·mean‖W x − target‖², quadratic in the trunk's weight W."""

    def __init__(self, net, target: torch.Tensor, **kwargs):
        super().__init__(net, **kwargs)
        self.target = target

    def task_loss(self, x):
        return 0.5 * (self.net.trunk(x) - self.target).square().sum(1).mean()

    def training_loss(self, x, y, task):
        return self.task_loss(x)


class LinearTrunk(nn.Sequential):
    def __init__(self, input_shape):
        super().__init__(nn.Linear(4, 3, bias=False))
        self.out_dim = 3


def quadratic_si(lamb: float) -> tuple[QuadraticSI, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(64, 4, dtype=torch.float64)
    return QuadraticSI(TaskNetwork(LinearTrunk, (4,), [3, 3]), None, lamb=lamb, xi=0.1).double(), x


def start_si_task(approach: QuadraticSI, t: int) -> None:
    approach.task_id = t
    approach.target = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(t))
    approach.on_train_start()


def si_step(approach: QuadraticSI, optimizer, x: torch.Tensor, t: int) -> None:
    optimizer.zero_grad()
    approach.training_loss(x, None, t).backward()
    approach.on_before_optimizer_step(optimizer)  # the penalty's gradient joins p.grad, as in Lightning
    optimizer.step()
    approach.on_after_optimizer_step()


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.1)])
def test_si_path_integral_sums_to_the_task_loss_decrease(momentum, weight_decay):
    """Gradient descent at a small lr (plain, with momentum, with weight decay): Σ ω ≈ L(θ_start) − L(θ_end) for the
    task loss, also in task 2 where the penalty (whose share of the gradient SI must leave out) pulls the other way."""
    approach, x = quadratic_si(lamb=0.5)
    for t in range(2):
        start_si_task(approach, t)
        optimizer = torch.optim.SGD(approach.regularized.values(), lr=2e-3, momentum=momentum,
                                    weight_decay=weight_decay)
        start = approach.task_loss(x).item()
        for _ in range(150):
            si_step(approach, optimizer, x, t)
        decrease = start - approach.task_loss(x).item()
        path = sum(w.sum() for w in approach.path_integral()).item()
        assert decrease > 0.05 and path == pytest.approx(decrease, rel=5e-3)
        assert (float(approach.penalty()) > 0) == (t > 0)
        approach.on_train_end()


@pytest.mark.parametrize("lr_change", [False, True])
def test_si_telescoped_path_equals_the_step_by_step_sum(lr_change):
    """Plain SGD: ω kept as Σ lr·U² with the corrections of the task end equals Σ −g·Δθ summed step by step (g the
    task gradient, Δθ the applied step), in the task with a penalty, also when the lr changes within the task (the
    steps after the change take the general accounting)."""
    approach, x = quadratic_si(lamb=2.0)
    params = approach.regularized
    for t in range(2):
        start_si_task(approach, t)
        optimizer = torch.optim.SGD(params.values(), lr=0.05)
        expected = {n: torch.zeros_like(p) for n, p in params.items()}
        for step in range(40):
            if lr_change and step == 20:
                optimizer.param_groups[0]["lr"] = 0.02
            loss_gradient = torch.autograd.grad(approach.task_loss(x), list(params.values()))
            before = [p.detach().clone() for p in params.values()]
            si_step(approach, optimizer, x, t)
            for name, g, b in zip(params, loss_gradient, before):
                expected[name] -= g * (params[name].detach() - b)
        assert float(approach.telescoped_lr) == (0.0 if t == 0 else -1.0 if lr_change else 0.05)
        assert t == 0 or float(approach.penalty()) > 0
        for name, path in zip(approach.path.names, approach.path_integral()):
            torch.testing.assert_close(path, expected[name], rtol=1e-9, atol=1e-12)
        approach.on_train_end()


def train_wide_si(fused_step: bool, steps: int = 30) -> tuple[SI, list[bool]]:
    """SI (float32, a 300→200 layer: the kernel's parallel loop) over two tasks of plain SGD; also, per step of task 2,
    whether the hook left every regularized p.grad at None (the step taken by the C pass)."""
    torch.manual_seed(0)
    approach = SI(TaskNetwork(lambda input_shape: MLP(input_shape, (200,)), (300,), [4, 4]), lamb=2.0,
                  fused_step=fused_step)
    optimizer = torch.optim.SGD(approach.net.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    taken = []
    for t in range(2):
        approach.task_id = t
        approach.on_train_start()
        x, y = torch.randn(64, 300, generator=g), torch.randint(0, 4, (64,), generator=g)
        for _ in range(steps):
            optimizer.zero_grad()
            approach.training_loss(x, y, t).backward()
            approach.on_before_optimizer_step(optimizer)
            if t == 1:
                taken.append(all(p.grad is None for p in approach.regularized.values()))
            optimizer.step()
            approach.on_after_optimizer_step()
        if t == 0:
            approach.on_train_end()
    return approach, taken


def kernels_buildable() -> bool:
    """Linux, torch on its libgomp, a C compiler: where cl/stats/kernels must build (CI); elsewhere SI runs its foreach path."""
    try:
        kernels.torch_openmp_runtime()
        kernels.c_compiler()
    except kernels.KernelUnavailable:
        return False
    return True


def test_si_fused_step_equals_the_foreach_passes():
    """The C pass (cl/stats/kernels/si_step.c: ω += lr·U², θ ← θ − lr·U) trains to the parameters, path integral and
    importances of the foreach passes; it is built and taken wherever a C compiler is present on Linux (CI)."""
    if not kernels_buildable():
        pytest.skip("the C kernels are built on Linux with torch's libgomp and a C compiler")
    fused, taken = train_wide_si(fused_step=True)
    reference, reference_taken = train_wide_si(fused_step=False)
    assert all(taken) and len(taken) == 30 and not any(reference_taken)
    for p, q in zip(fused.net.parameters(), reference.net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    for w, v in zip(fused.path_integral(), reference.path_integral()):
        torch.testing.assert_close(w, v, rtol=1e-4, atol=1e-7)
        assert v.abs().sum() > 0
    fused.on_train_end()
    reference.on_train_end()
    for name, importance in fused.importances().items():
        torch.testing.assert_close(importance, reference.importances()[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("compiler,reason", [("no-such-cc", "no C compiler"), ("false", "failed")])
def test_si_runs_the_foreach_passes_where_the_kernel_cannot_be_built(compiler, reason, monkeypatch, tmp_path, caplog):
    says_why = kernels_buildable()  # with the real compiler; elsewhere the log gives an earlier reason
    monkeypatch.setenv("CC", compiler)
    monkeypatch.setenv("CL_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_loaded", {})
    si_fused._sgd_step_kernel.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="cl.stats.kernels"):
            approach, taken = train_wide_si(fused_step=True, steps=2)
        assert taken == [False, False] and approach.path_integral()[0].abs().sum() > 0
        if says_why:
            assert "si_step.c not used, torch ops instead: " in caplog.text and reason in caplog.text
        assert list(tmp_path.iterdir()) == []  # no partial library left behind
    finally:
        si_fused._sgd_step_kernel.cache_clear()


# --- IMM -------------------------------------------------------------------------------------------------------------
def imm_after_two_tasks(cls, **kwargs):
    """Task models θ_0 and θ_1 with Fishers F_0, F_1 (F zero at some entries of both), merged by `cls`."""
    torch.manual_seed(0)
    approach = cls(TaskNetwork(lambda input_shape: MLP(input_shape, (3,)), (2,), [2, 2]), **kwargs)
    g = torch.Generator().manual_seed(1)
    models = [{n: torch.randn(p.shape, generator=g) for n, p in approach.regularized.items()} for _ in range(2)]
    fishers = [{n: torch.rand(p.shape, generator=g) * (torch.rand(p.shape, generator=g) > 0.3)
                for n, p in approach.regularized.items()} for _ in range(2)]
    fishers[1]["trunk.1.bias"][0] = fishers[0]["trunk.1.bias"][0] = 0.0
    approach.task_fisher = lambda t: fishers[t]
    for t in range(2):
        approach.task_id = t
        with torch.no_grad():
            for n, p in approach.regularized.items():
                p.copy_(models[t][n])
        approach.on_train_end()
    return approach, models, fishers


def test_imm_mode_merges_by_the_fisher_weighted_mean():
    approach, (m0, m1), (f0, f1) = imm_after_two_tasks(IMMMode)
    for name, p in approach.regularized.items():
        total = f0[name] + f1[name]
        expected = torch.where(total > 0, (f0[name] * m0[name] + f1[name] * m1[name]) / total, m1[name])
        torch.testing.assert_close(p.detach(), expected)
        differs = (total > 0) & (f0[name] > 0) & (f1[name] > 0)
        assert (p[differs] != m0[name][differs]).all() and (p[differs] != m1[name][differs]).all()
        torch.testing.assert_close(approach.terms[0].anchor[name], expected)  # the next task's L2 anchor
        torch.testing.assert_close(approach.importances()[name], total)


def test_imm_mode_merge_noop_keeps_the_last_model_and_imm_mean_averages():
    approach, (_, m1), _ = imm_after_two_tasks(IMMMode, merge_noop=True)
    for name, p in approach.regularized.items():
        assert torch.equal(p.detach(), m1[name])
    approach, (m0, m1), _ = imm_after_two_tasks(IMMMean)
    for name, p in approach.regularized.items():
        torch.testing.assert_close(p.detach(), (m0[name] + m1[name]) / 2)


# --- through Lightning: a 2-task problem where plain SGD forgets ------------------------------------------------------
def conflicting_stream(sizes: tuple[int, int, int] = (512, 64, 256)) -> Stream:
    """Two tasks on the same inputs with orthogonal labelling rules, one shared head: learning task 2 overwrites
    task 1 unless something holds the weights it needs. `sizes`: train, validation and test samples per task."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(10, generator=g)
    v = torch.randn(10, generator=g)
    v -= (v @ u) / (u @ u) * u
    tasks = []
    for t, w in enumerate([u, v]):
        splits = []
        for n in sizes:
            x = torch.randn(n, 10, generator=g)
            splits.append(Split(x, (x @ w > 0).long()))
        tasks.append(Task(f"t{t}", [0, 1], *splits, transform=InputTransform()))
    return Stream("conflict", tasks, (10,))


def fit(approach, data: DeviceStream, t: int, epochs: int, tmp_path, callbacks=()):
    approach.task_id = t
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=list(callbacks), default_root_dir=str(tmp_path))
    with quiet_lightning():  # no validation here, as in the pipeline's runs without a validation split
        trainer.fit(approach, TaskBatches(approach.train_sources(data, t), 32, shuffle=True, seed=t))


def task_one_accuracy(cls, tmp_path, **kwargs) -> float:
    stream = conflicting_stream()
    torch.manual_seed(0)
    net = TaskNetwork(lambda input_shape: MLP(input_shape, (32,)), (10,), [2, 2], head="shared", n_shared_classes=2)
    approach = cls(net, lr=0.1, batch_size=32, **kwargs)
    approach.setup_stream(stream)
    data = DeviceStream(stream, "cpu", shared_head=True)
    for t in range(2):
        fit(approach, data, t, 3, tmp_path)
    return approach.accuracy(data.source(0, "test"))


@pytest.fixture(scope="module")
def sgd_task_one_accuracy(tmp_path_factory) -> float:
    return task_one_accuracy(SGD, tmp_path_factory.mktemp("sgd"))


STRENGTHS = {EWC: {"lamb": 100.0}, OnlineEWC: {"lamb": 100.0}, SI: {"lamb": 10.0}, MAS: {"lamb": 1.0},
             MASLocal: {"lamb": 1.0}, IMMMean: {"lamb": 0.1}, IMMMode: {"lamb": 0.1}}


@pytest.mark.parametrize("cls", REGULARIZERS, ids=lambda c: c.__name__)
def test_each_regularizer_keeps_task_one_better_than_sgd(cls, sgd_task_one_accuracy, tmp_path):
    assert sgd_task_one_accuracy < 0.7  # the problem makes plain SGD forget (chance: 0.5)
    assert task_one_accuracy(cls, tmp_path, **STRENGTHS[cls]) > sgd_task_one_accuracy + 0.15


class PenaltyLog(pl.Callback):
    def __init__(self):
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.values.append(float(pl_module.penalty()))


def test_mas_importance_ignores_labels_is_keyed_by_name_and_keeps_growing(tmp_path):
    stream = conflicting_stream()
    torch.manual_seed(0)
    make_net = lambda: TaskNetwork(lambda input_shape: MLP(input_shape, (8,)), (10,), [2, 2])  # noqa: E731
    approach = MAS(make_net(), lr=0.1, batch_size=32)
    approach.setup_stream(stream)
    data = DeviceStream(stream, "cpu", shared_head=False)
    fit(approach, data, 0, 1, tmp_path)
    after_one = {n: v.clone() for n, v in approach.importances().items()}
    source = data.source(0, "train")
    relabelled = BatchSource(source.x, 1 - source.y, 0, source.transform)
    recomputed = [mas_omega(approach.net, approach.stat_modules, approach.task_logits(0), s, "l2", True, 200, None)
                  for s in (source, relabelled)]
    for name in after_one:
        assert torch.equal(recomputed[0][name], recomputed[1][name]) and recomputed[0][name].sum() > 0

    log = PenaltyLog()
    fit(approach, data, 1, 1, tmp_path, [log])
    assert min(log.values) > 0  # the penalty acts in task 2 (the re-implementation's is silently 0 there)
    for name, omega in approach.importances().items():
        assert (omega >= after_one[name]).all() and (omega > after_one[name]).any()

    fresh = MAS(make_net(), lr=0.1)  # a rebuilt network: new Parameter objects, state found by name
    fresh.load_state_dict(approach.state_dict())
    with torch.no_grad():
        for p in fresh.regularized.values():
            p.add_(0.1)
    assert fresh.penalty().item() > 0


# --- state: size and loading into a freshly built approach ------------------------------------------------------------
@pytest.mark.parametrize("cls", REGULARIZERS, ids=lambda c: c.__name__)
def test_state_size_and_loading_into_a_fresh_approach(cls):
    """cl_state_bytes: linear in the tasks for offline EWC, constant otherwise; after each task a freshly built
    approach loads the state (strict) and gives the same penalty."""
    stream = conflicting_stream()
    stream.tasks.append(stream.tasks[0])
    data = DeviceStream(stream, "cpu", shared_head=False)

    def build() -> ImportanceRegularizer:
        torch.manual_seed(0)
        fewer_samples = {"fisher_samples": 50} if issubclass(cls, FisherRegularizer) else {}
        approach = cls(TaskNetwork(lambda input_shape: MLP(input_shape, (8,)), (10,), [2, 2, 2]), **fewer_samples)
        approach.setup_stream(stream)
        return approach

    approach = build()
    n_params = sum(p.numel() for p in approach.regularized.values())
    sizes = []
    for t in range(3):
        approach.task_id = t
        x, y, _ = next(iter(TaskBatches(approach.train_sources(data, t), 32, shuffle=True, seed=t)))
        optimizer = torch.optim.SGD(approach.trainable_parameters(), lr=0.1)
        approach.on_train_start()
        for _ in range(3):  # a few SGD steps, so that SI's path integral is not empty
            optimizer.zero_grad()
            approach.training_loss(x, y, t).backward()
            approach.on_before_optimizer_step(optimizer)
            optimizer.step()
            approach.on_after_optimizer_step()
        approach.on_train_end()
        sizes.append(approach.cl_state_bytes())
        fresh = build()
        fresh.load_state_dict(approach.state_dict())
        with torch.no_grad():
            for p, q in zip(approach.regularized.values(), fresh.regularized.values()):
                p.add_(0.05)
                q.add_(0.05)
        assert fresh.penalty().item() == pytest.approx(approach.penalty().item(), rel=1e-6) and fresh.penalty() > 0
    if cls is EWC:
        assert sizes[1] - sizes[0] == sizes[2] - sizes[1] == 8 * n_params  # one Fisher and one anchor per task
    else:
        assert sizes[0] == sizes[1] == sizes[2] >= 4 * n_params


# --- legacy Fisher estimators and impossible combinations ------------------------------------------------------------
def test_legacy_fisher_estimators_follow_their_codes():
    """hat_legacy: Σ_batches 20·g_b²/N; blip_legacy: Σ_batches 20·g_b²/#batches; gem_legacy: (∇ mean CE over the
    first n samples)²; all with true labels, in train mode."""
    torch.manual_seed(0)
    net = TaskNetwork(lambda input_shape: MLP(input_shape, (6,)), (4,), [3]).double()
    modes = []
    net.trunk.register_forward_hook(lambda m, *_: modes.append(m.training))
    net.eval()
    x, y = torch.randn(23, 4, dtype=torch.float64), torch.randint(0, 3, (23,))
    params = dict(net.trunk.named_parameters())
    modules = {"trunk.1": net.trunk[1]}

    def squared_gradient(rows):
        loss = F.cross_entropy(net(x[rows], 0), y[rows])
        return {f"trunk.{n}": g ** 2 for n, g in zip(params, torch.autograd.grad(loss, list(params.values())))}

    batches = [squared_gradient(slice(s, s + 5)) for s in range(0, 20, 5)]
    expected = {"hat_legacy": {n: 20 * sum(b[n] for b in batches) / 20 for n in batches[0]},
                "blip_legacy": {n: 20 * sum(b[n] for b in batches) / 4 for n in batches[0]},
                "gem_legacy": squared_gradient(slice(0, 20))}
    modes.clear()
    for estimator, want in expected.items():
        got = fisher_diagonal(net, modules, lambda v: net(v, 0), as_source(x, y), FisherOptions(estimator, 20, 5))
        assert_close(got, want)
    assert modes and all(modes) and not net.training


def test_impossible_combinations_stop_with_one_line():
    class NormTrunk(nn.Sequential):
        def __init__(self, input_shape):
            super().__init__(nn.Linear(4, 4), nn.LayerNorm(4))
            self.out_dim = 4

    stream = conflicting_stream()
    with pytest.raises(ConfigError, match="mas_local .* LayerNorm") as err:
        MASLocal(TaskNetwork(NormTrunk, (4,), [2, 2]), name="mas_local").setup_stream(stream)
    assert "\n" not in str(err.value)

    class EmptyTrunk(nn.Flatten):
        out_dim = 10

    with pytest.raises(ConfigError, match="no trainable shared parameters"):
        MAS(TaskNetwork(lambda input_shape: EmptyTrunk(), (10,), [2, 2]), name="mas").setup_stream(stream)
