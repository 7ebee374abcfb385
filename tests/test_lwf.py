"""LwF: the distillation terms on hand-made logits (paper, the HAT/BLIP eps, the GEM/BCL legacy KL), the warm-up,
the legacy first epoch, forgetting against sgd, the head-mode check and resume."""
from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch

from cl.approaches.baselines.sgd import SGD
from cl.approaches.regularization.lwf import LwF
from cl.approaches.regularization.lwf import legacy_kl, soft_cross_entropy
from cl.errors import ConfigError
from cl.models.mlp import MLP
from cl.models.network import TaskNetwork
from data.device_stream import DeviceStream
from tests.conftest import run_pipeline
from tests.test_blip import gaussian_stream
from tests.test_pipeline import CrashOnFit


# --- the distillation terms ----------------------------------------------------------------------------------
def test_soft_cross_entropy_is_the_papers_l_old():
    new, old = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    # T = 2: p = softmax(old / 2) = (1, e, 1) / (2 + e), q = softmax(new / 2) = (e, 1, 1) / (2 + e)
    e = math.e
    expected = -((1 * math.log(e / (2 + e)) + e * math.log(1 / (2 + e)) + 1 * math.log(1 / (2 + e))) / (2 + e))
    assert soft_cross_entropy(new, old, T=2.0).item() == pytest.approx(expected, rel=1e-6)
    # and the paper's form y^{1/T} / Σ y^{1/T} of the softmax outputs gives the same
    batch_new, batch_old = torch.randn(5, 4), torch.randn(5, 4)
    p, q = (torch.softmax(z, 1) ** 0.5 for z in (batch_old, batch_new))
    p, q = p / p.sum(1, keepdim=True), q / q.sum(1, keepdim=True)
    assert soft_cross_entropy(batch_new, batch_old, T=2.0).item() == pytest.approx(
        float(-(p * q.log()).sum(1).mean()), rel=1e-5)


def test_eps_smooths_the_new_probabilities_as_the_hat_code():
    new, old = torch.tensor([[30.0, -30.0], [0.5, 0.0]]), torch.tensor([[-30.0, 30.0], [0.0, 1.0]])
    eps = 1e-5
    q = torch.softmax(new.double(), 1)
    q = (q + eps / 2) / (1 + eps)
    expected = float(-(torch.softmax(old.double(), 1) * q.log()).sum(1).mean())
    got = soft_cross_entropy(new, old, T=1.0, eps=eps)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert got.item() < -math.log(eps / 2)  # bounded, where eps = 0 gives the first row's whole 60 nats
    assert soft_cross_entropy(new, old, T=1.0).item() > 30


def test_legacy_kl_counts_only_positive_targets_over_batch_times_classes():
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    recorded = torch.tensor([[1.5, -0.5, 0.0], [2.0, 0.5, -3.0]])  # raw logits as targets, as the GEM/BCL code
    log_q = torch.log_softmax(logits / 2.0, 1)
    expected = (1.5 * (math.log(1.5) - log_q[0, 0]) + 2.0 * (math.log(2.0) - log_q[1, 0])
                + 0.5 * (math.log(0.5) - log_q[1, 1])) / 6
    got = legacy_kl(logits.requires_grad_(), recorded, T=2.0)
    assert got.item() == pytest.approx(float(expected), rel=1e-6)
    got.backward()
    assert torch.isfinite(logits.grad).all()


# --- training ------------------------------------------------------------------------------------------------
def on_gaussians(cls=LwF, n_tasks: int = 2, **kwargs):
    stream = gaussian_stream(n_tasks)
    torch.manual_seed(0)
    net = TaskNetwork(lambda input_shape: MLP(input_shape, (16,)), stream.input_shape, [3] * n_tasks)
    approach = cls(net, lr=0.2, batch_size=32, **kwargs)
    approach.setup_stream(stream)
    return approach, DeviceStream(stream, "cpu", shared_head=False)


def snapshot(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def changed(module, before) -> set[str]:
    return {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}


def test_warm_up_trains_only_the_new_head(fit_task):
    approach, data = on_gaussians(warmup_epochs=2)
    fit_task(approach, data, 0, epochs=2, validate=True)
    before = snapshot(approach.net)
    fit_task(approach, data, 1, epochs=2, validate=True)  # both epochs are warm-up
    assert changed(approach.net, before) == {"heads.1.weight", "heads.1.bias"}
    # a third epoch trains jointly: trunk and old head move too
    fit_task(approach, data, 1, epochs=3, validate=True)
    assert {"trunk.1.weight", "heads.0.weight"} <= changed(approach.net, before)


def test_lwf_keeps_task_one_accuracy_above_sgd(fit_task):
    task_one = {}
    for cls in (SGD, LwF):
        approach, data = on_gaussians(cls)
        fit_task(approach, data, 0, epochs=5, validate=True)
        fit_task(approach, data, 1, epochs=10, validate=True)
        task_one[cls] = approach.accuracy(data.source(0, "test"))
    assert task_one[LwF] > task_one[SGD] + 0.05, task_one


def test_gem_variant_trains_nothing_in_the_first_epoch_of_every_task(fit_task):
    approach, data = on_gaussians(variant="gem", lamb=1.0, T=1.0)
    before = snapshot(approach.net)
    fit_task(approach, data, 0, epochs=1, validate=True)
    assert not changed(approach.net, before)  # the GEM/BCL code skips task 1's first epoch too
    fit_task(approach, data, 0, epochs=2, validate=True)
    assert changed(approach.net, before) == {"trunk.1.weight", "trunk.1.bias", "heads.0.weight", "heads.0.bias"}


def test_paper_variant_on_a_shared_head_stops_before_training(tmp_path):
    with pytest.raises(ConfigError, match="approach.variant=gem"):
        run_pipeline(["approach=lwf", "model.head=shared", "debug=default"], tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_the_teacher_is_in_the_state_dict_from_construction(fit_task):
    trained, data = on_gaussians()
    fit_task(trained, data, 0, epochs=1, validate=True)  # on_train_end takes the teacher
    fresh = on_gaussians()[0]
    assert not torch.equal(fresh.old.net.trunk[1].weight, trained.net.trunk[1].weight)
    fresh.load_state_dict(trained.state_dict())  # what resuming from a checkpoint does
    for name, p in trained.net.named_parameters():
        assert torch.equal(dict(fresh.old.net.named_parameters())[name], p)
    net_bytes = sum(p.numel() * p.element_size() for p in fresh.net.parameters())
    assert fresh.cl_state_bytes() == net_bytes  # LwF's state: one copy of the network


@pytest.mark.slow
def test_a_resumed_run_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    overrides = ["approach=lwf", "stream.tasks=[[0,1],[2,3],[4,5]]", "trainer.max_epochs=2", "seed=1"]
    full = run_pipeline(overrides, tmp_path / "full")
    crash = CrashOnFit(monkeypatch, crash_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(overrides, tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "results.json").read_text())["tasks_done"] == 2
    monkeypatch.setattr(pl.Trainer, "fit", crash.fit)
    resumed = run_pipeline([*overrides, "resume=true"], tmp_path / "cut")
    assert resumed["acc_matrix"] == full["acc_matrix"]
    assert resumed["memory"]["cl_state_bytes"] == full["memory"]["cl_state_bytes"]
