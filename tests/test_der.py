"""DER and DER++ (cl/approaches/replay/der.py, derpp.py): the loss of one step against a hand computation, the logits
stored with each sample, end-to-end debug runs, and a checkpoint that keeps the stored logits."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from cl.approaches.replay.der import DER, masked_mse
from cl.approaches.replay.derpp import DERPP
from cl.models.mlp import MLP
from cl.models.network import TaskNetwork
from data.device_stream import DeviceStream
from data.streams import digits5
from tests.conftest import run_pipeline
from tests.test_pipeline import CrashOnFit

ALPHA, BETA = 0.7, 0.3


def tiny(cls, head: str = "multi", widths=(2, 2, 2, 2, 2), **kwargs):
    """A DER/DER++ on digits5's shape, ready to observe task 1 (task 0's memory filled by `observe` + `remember`),
    with a recording optimizer in place of Lightning's."""
    torch.manual_seed(0)
    stream = digits5()
    net = TaskNetwork(lambda input_shape: MLP(input_shape, hidden_sizes=[16]), stream.input_shape, list(widths),
                      head=head, n_shared_classes=10)
    approach = cls(net, n_memories=12, memory_policy="reservoir", replay_batch_size=6, alpha=ALPHA, lr=0.1,
                   **kwargs)
    approach.setup_stream(stream)
    approach.setup("fit")
    approach.optimizer = torch.optim.SGD(approach.parameters(), lr=0.1)
    approach.step_progress = SimpleNamespace(increment_ready=lambda: None, increment_completed=lambda: None)
    losses = []
    approach.sgd_step = lambda loss, **kw: (losses.append(loss), type(approach).sgd_step(approach, loss, **kw))[1]
    approach.recorded = losses
    data = DeviceStream(stream, "cpu", shared_head=head == "shared")
    return approach, data


def batch(data, t, start, n=8):
    s = data.source(t, "train")
    return s.transform(s.x[start:start + n]), s.y[start:start + n]


def fill_task_0(approach, data):
    """Two batches of task 0 through observe and remember; returns the logits each sample had before its step."""
    seen = []
    for start in (0, 8):
        x, y = batch(data, 0, start)
        with torch.no_grad():
            seen.append(approach(x, 0))
        approach.observe(x, y, 0)
        approach.remember(x, y, 0)
    return torch.cat(seen)


@pytest.mark.parametrize("cls", [DER, DERPP])
def test_one_step_loss_is_ce_plus_alpha_mse_and_derpp_adds_beta_ce(cls):
    kwargs = {"beta": BETA} if cls is DERPP else {}
    approach, data = tiny(cls, **kwargs)
    before = fill_task_0(approach, data)
    mem = approach.memory
    assert mem.filled[0] == 12 and approach.recorded[0].requires_grad
    # every held sample carries the logits its batch's forward gave it, before that batch's step
    held = mem.x[0, :12].flatten(1)
    x0 = torch.cat([batch(data, 0, 0)[0], batch(data, 0, 8)[0]]).flatten(1)
    where = (held[:, None] == x0[None]).all(-1).float().argmax(1)
    assert torch.equal(mem.logits[0, :12], before[where])

    x, y = batch(data, 1, 0)
    net = approach.net
    before_step = copy.deepcopy(net.state_dict())
    torch.manual_seed(5)
    approach.observe(x, y, 1)
    loss = approach.recorded[-1]
    # by hand, with the network as it was before the step and the replay batches the same generator state draws
    net.load_state_dict(before_step)
    torch.manual_seed(5)
    first = mem.sample(range(1), 6)
    second = mem.sample(range(1), 6)
    with torch.no_grad():
        expected = F.cross_entropy(net(x, 1), y) + ALPHA * F.mse_loss(net(first.x, 0), first.extra["logits"])
        if cls is DERPP:
            expected = expected + BETA * F.cross_entropy(net(second.x, 0), second.y)
    torch.testing.assert_close(loss.detach(), expected)


def test_heads_of_different_widths_store_padded_logits_and_compare_only_the_own_head():
    approach, data = tiny(DER, widths=(2, 3, 2, 2, 2))
    assert approach.memory.logits.shape == (5, 12, 3)
    fill_task_0(approach, data)
    assert (approach.memory.logits[0, :, 2] == 0).all()  # task 0's head is 2 wide: the padding stays 0
    x, y = batch(data, 1, 0)
    approach.recorded.clear()
    torch.manual_seed(1)
    approach.observe(x, y, 1)
    assert torch.isfinite(approach.recorded[0])
    # a mixed replay batch of tasks 0 (2 columns) and 1 (3 columns): the MSE averages only real columns
    approach.remember(x, y, 1)
    replay = approach.memory.sample(range(2), 12)
    logits = approach(replay.x, replay.task)
    widths = approach.head_width[replay.task]
    by_hand = sum(((logits[i, :w] - replay.extra["logits"][i, :w]) ** 2).sum() for i, w in enumerate(widths.tolist()))
    assert set(replay.task.tolist()) == {0, 1} and logits.shape[1] == 3
    torch.testing.assert_close(masked_mse(logits, replay.extra["logits"], widths), by_hand / widths.sum())


@pytest.mark.parametrize("approach", ["der", "derpp"])
@pytest.mark.parametrize("head", ["multi", "shared"])
def test_debug_run_through_the_pipeline(approach, head, fixture_data, tmp_path):
    results = run_pipeline([f"approach={approach}", f"model.head={head}", "stream=digits5", "debug=default",
                            "model.trunk.hidden_sizes=[32,32]", "eval_max_samples=16",
                            f"paths.data_dir={fixture_data}", "approach.batch_size=8"], tmp_path)
    assert results["complete"] and results["approach_info"]["alpha"] == 1.0
    assert results["approach_info"]["memory_samples"] == 5 * 24  # 3 batches of 8 per task, all held


def test_checkpoint_keeps_the_stored_logits_and_a_resumed_run_matches(tmp_path, monkeypatch):
    overrides = ["approach=derpp", "debug=default", "model.trunk.hidden_sizes=[32,32]", "eval_max_samples=16",
                 "approach.batch_size=8", "seed=3"]
    full = run_pipeline(overrides, tmp_path / "full")
    crash = CrashOnFit(monkeypatch, crash_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(overrides, tmp_path / "cut")
    monkeypatch.setattr(pl.Trainer, "fit", crash.fit)
    saved = torch.load(tmp_path / "cut" / "checkpoints" / "task_1.ckpt", map_location="cpu",
                       weights_only=False)["state_dict"]
    assert saved["memory.logits"].shape == (5, 256, 2)
    assert saved["memory.logits"][:2, :24].abs().min() > 0 and (saved["memory.logits"][2:] == 0).all()
    resumed = run_pipeline([*overrides, "resume=true"], tmp_path / "cut")
    assert resumed["acc_matrix"] == full["acc_matrix"]
    last = [torch.load(tmp_path / run / "checkpoints" / "task_4.ckpt", map_location="cpu",
                       weights_only=False)["state_dict"]["memory.logits"] for run in ("full", "cut")]
    assert torch.equal(last[0], last[1])
    assert torch.equal(last[0][:2], saved["memory.logits"][:2])  # tasks 0-1 never written again after their end


@pytest.mark.parametrize("approach,beta,allowed", [("bcl_dual", 0.0, False), ("bcl_dual", 1.0, True),
                                                   ("derpp", 0.0, True), ("derpp", 2.0, True)])
def test_beta_has_each_approachs_own_range(approach, beta, allowed, tmp_path):
    """One key, two rules: BCL's Reptile β is in (0, 1], DER++'s replay weight β is any number >= 0."""
    from cl.config.options import check_options
    from cl.errors import ConfigError
    from tests.conftest import compose_config

    cfg = compose_config([f"approach={approach}", f"approach.beta={beta}"], tmp_path)
    if allowed:
        check_options(cfg)
    else:
        with pytest.raises(ConfigError, match=r"^approach\.beta=0\.0 is out of range: must be a number > 0"):
            check_options(cfg)
