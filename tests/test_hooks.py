"""Hand-written optimizer steps run the hooks Lightning runs around a step (ContinualApproach.
call_before_optimizer_step_hooks): a replay approach combined with a penalty keeps the penalty. ER stepped its bare
optimizer without `on_before_optimizer_step`, so EWC's penalty mixed into it silently did nothing."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from cl.approaches.regularization.ewc import EWC
from cl.approaches.replay.er import ER
from cl.models.mlp import MLP
from cl.models.network import TaskNetwork
from data.device_stream import DeviceStream
from data.stream import Stream
from tests.test_regularizers import conflicting_stream


class ERWithEWC(ER, EWC):
    """ER whose steps also carry EWC's penalty: a composition no recipe uses, built for these tests."""


def build(cls, stream: Stream, **kwargs):
    torch.manual_seed(0)
    net = TaskNetwork(lambda input_shape: MLP(input_shape, (16,)), (10,), [2, 2], head="shared", n_shared_classes=2)
    approach = cls(net, batch_size=8, n_memories=32, chunk_batches=4, **kwargs)
    approach.setup_stream(stream)
    return approach


class Steps:
    """What Lightning's manual optimization counts; a stub outside a Trainer."""

    def increment_ready(self):
        pass

    def increment_completed(self):
        pass


@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["plain_sgd", "momentum"])
def test_a_replay_step_with_a_penalty_differs_from_plain_er_by_the_penalty_alone(momentum):
    """One sgd_step of ER+EWC from the same parameters as ER's: the parameters differ by exactly the penalty's share
    of the step, −lr·λ·F ⊙ (θ − θ*), whether it is taken toward the anchor (plain SGD) or through p.grad (momentum)."""
    stream = conflicting_stream((256, 32, 64))
    lr, lamb = 0.1, 50.0
    mixed = build(ERWithEWC, stream, lr=lr, momentum=momentum, lamb=lamb).double()
    plain = build(ER, stream, lr=lr, momentum=momentum).double()
    g = torch.Generator().manual_seed(3)
    start = {n: p.detach().clone() for n, p in mixed.regularized.items()}
    fisher = {n: torch.rand(p.shape, generator=g, dtype=p.dtype) for n, p in start.items()}
    anchor = {n: p + 0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in start.items()}
    term = mixed.terms.add()  # as consolidate(0) leaves it
    term.importance.copy_(fisher)
    term.anchor.copy_(anchor)
    mixed.tasks_consolidated += 1
    x, y = torch.randn(8, 10, generator=g, dtype=torch.float64), torch.randint(0, 2, (8,), generator=g)
    for approach in (mixed, plain):
        approach.task_id = 1
        approach.optimizer = torch.optim.SGD(approach.trainable_parameters(), lr=lr, momentum=momentum)
        approach.step_progress = Steps()
        approach.sgd_step(F.cross_entropy(approach(x, 1), y))
    after_plain = dict(plain.net.named_parameters())
    for name, p in mixed.regularized.items():
        expected = after_plain[name].detach() - lr * lamb * fisher[name] * (start[name] - anchor[name])
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14, msg=name)
        assert not torch.equal(p.detach(), after_plain[name].detach())


class PenaltyLog(pl.Callback):
    """The penalty after each training step, and how often the callbacks' before-step hook ran."""

    def __init__(self):
        self.values: list[float] = []
        self.before_steps = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before_steps += 1

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.values.append(float(pl_module.penalty()))


def test_er_with_ewc_through_lightning_keeps_the_penalty(fit_task):
    """Two tasks through a real Trainer: task 1 of ER and of ER+EWC start from the same weights (no penalty in task
    0), and ER+EWC ends much nearer the anchor in the Fisher metric; its penalty acted at every step of task 1, and
    the callbacks' `on_before_optimizer_step` ran before each of the hand-written steps, as Lightning runs it."""
    stream = conflicting_stream((256, 32, 64))
    data = DeviceStream(stream, "cpu", shared_head=True)
    mixed = build(ERWithEWC, stream, lr=0.1, lamb=20.0, fisher_samples=128)
    plain = build(ER, stream, lr=0.1)
    for approach in (mixed, plain):
        fit_task(approach, data, 0)
    assert all(torch.equal(p, q) for p, q in zip(mixed.net.parameters(), plain.net.parameters()))
    log = PenaltyLog()
    trainer = fit_task(mixed, data, 1, callbacks=[log])
    fit_task(plain, data, 1)
    assert log.values and min(log.values) > 0
    assert log.before_steps == trainer.global_step > 0

    term = mixed.terms[0]
    params = dict(plain.net.named_parameters())

    def distance(named: dict[str, torch.Tensor]) -> float:
        return float(sum((term.importance[n] * (named[n].detach() - term.anchor[n]).square()).sum()
                         for n in mixed.regularized))

    assert distance(mixed.regularized) < 0.5 * distance(params)
