"""LwF, Learning without Forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2017): while task t trains on its own data,
the old tasks' heads are kept answering as the network did before the task, by distillation against a frozen copy
of the network taken at the end of the previous task. No old data and no parameter penalty.

`variant: paper` — loss = CE(head t) + λ · Σ_{u<t} CE(softmax(old_u / T), softmax(new_u / T)) on task t's data, the
trunk and every head trained jointly; the first `warmup_epochs` epochs of each task t > 1 train the new head alone
(the paper's warm-up). `eps` > 0 smooths the new probabilities as the HAT/BLIP baseline code does. Needs one head
per task: it distills each old task's own head.

`variant: gem` — the GEM/BCL "lwf" baseline (`model/lwf.py`), kept only to reproduce numbers published with it:
the first epoch of every task trains nothing (the code spends it recording targets, so with one epoch per task no
task after the first is ever learned; the code's task 1 also loses its first epoch); then loss = CE + λ ·
KLDivLoss(log_softmax(z_t / T), recorded z_t), where z_t are the *current* task's head outputs and the recorded
targets are that head's raw logits before the task (not probabilities), under PyTorch 1.x semantics (targets ≤ 0
count 0, mean over batch × classes, no T²). With a shared head this distills the shared outputs (BCL's permuted
MNIST); with one head per task it distills the new head's untrained outputs (BCL's CIFAR/CUB/miniImageNet), which
protects nothing. The targets come from the frozen copy in eval mode (the code recorded them in train mode).

The frozen copy lives in the state dict from construction (fixed shapes) and is refreshed in `on_train_end`, after
the schedule restored the best weights, so task-end and mid-task checkpoints resume with the right teacher. At each
task start its outputs on the task's training data are recorded once, as the paper does (`record_targets`);
validation runs the frozen copy on its batches."""
from __future__ import annotations

import copy
import logging
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from cl.approaches.base import ContinualApproach
from cl.config.options import Choice, Float, Int, options
from cl.errors import ConfigError
from cl.models.network import TaskNetwork
from data.tensor_loader import BatchSource

log = logging.getLogger(__name__)
# the GEM variant's first epoch returns None from training_step on purpose (nothing trains in that epoch)
warnings.filterwarnings("ignore", message=r"`training_step` returned `None`")


def soft_cross_entropy(logits: torch.Tensor, old_logits: torch.Tensor, T: float, eps: float = 0.0) -> torch.Tensor:
    """Li & Hoiem's L_old: −Σ_c p_c log q_c averaged over the batch, p = softmax(old / T), q = softmax(new / T) (the
    paper's y^{1/T} renormalized). eps > 0 mixes eps/n into q and renormalizes, q' = (q + eps/n) / (1 + eps), as
    the HAT/BLIP code (computed in log space, so saturated outputs stay finite)."""
    target = F.softmax(old_logits / T, dim=1)
    log_q = F.log_softmax(logits / T, dim=1)
    if eps > 0:
        floor = torch.full_like(log_q, math.log(eps / log_q.shape[1]))
        log_q = torch.logaddexp(log_q, floor) - math.log1p(eps)
    return -(target * log_q).sum(1).mean()


def legacy_kl(logits: torch.Tensor, recorded: torch.Tensor, T: float) -> torch.Tensor:
    """GEM/BCL's `nn.KLDivLoss()(log_softmax(z / T), recorded)` with raw logits as targets, as PyTorch 1.x computed
    it: Σ target·(log target − log q) over the entries with target > 0 (the others count 0), divided by batch ×
    classes. PyTorch 2 returns NaN for negative targets, hence this explicit form."""
    target = recorded.clamp_min(0)
    return (torch.xlogy(target, target) - target * F.log_softmax(logits / T, dim=1)).mean()


class FrozenCopy(nn.Module):
    """A copy of the network that never trains: the teacher. LwF puts it in eval mode for each fit (no dropout,
    BatchNorm on its running statistics), from `on_train_start`, after Lightning's check that modules train at the
    start of a fit; Lightning's validation loop restores each module's mode as it found it."""

    def __init__(self, net: TaskNetwork):
        super().__init__()
        self.net = copy.deepcopy(net).requires_grad_(False)

    @torch.no_grad()
    def snapshot(self, net: TaskNetwork) -> None:
        self.net.load_state_dict(net.state_dict())

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.trunk(x)


@options(lamb=Float(ge=0), T=Float(gt=0), warmup_epochs=Int(ge=0), eps=Float(ge=0, lt=1),
         variant=Choice(("paper", "gem")))
class LwF(ContinualApproach):
    def __init__(self, net: TaskNetwork, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 batch_size: int = 64, eval_batch_size: int = 1000, name: str | None = None, lamb: float = 1.0,
                 T: float = 2.0, warmup_epochs: int = 1, eps: float = 0.0, variant: str = "paper"):
        super().__init__(net, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, name=name or "lwf")
        self.lamb, self.T, self.warmup_epochs, self.eps, self.variant = lamb, T, warmup_epochs, eps, variant
        self.old = FrozenCopy(net)  # the network at the end of the previous task: the distillation's teacher
        # the task's training sources, their labels and the teacher's recorded outputs, by sample position
        self._sources: list[BatchSource] = []
        self._labels: torch.Tensor | None = None
        self._targets: list[torch.Tensor] | None = None

    def setup_stream(self, stream) -> None:
        super().setup_stream(stream)
        if self.variant == "paper" and not self.net.multi_head:
            raise ConfigError("approach=lwf (variant paper) distills each old task's own head and needs one head per "
                              "task; use model.head=multi, or approach.variant=gem to distill a shared head")

    def trained_tasks(self) -> list[int]:
        # the paper trains the old heads θ_o with the distillation; the GEM variant touches only the current head
        return list(range(self.task_id + 1)) if self.variant == "paper" else [self.task_id]

    # --- the objective ----------------------------------------------------------------------------------------
    def objective(self, x: torch.Tensor, y: torch.Tensor, task: int,
                  targets: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """CE of the task's head plus λ × the distillation (from task 2 on), and the task's logits. `targets`: the
        teacher's outputs for x (recorded before the task); None: one no-grad pass of the frozen copy now."""
        features = self.net.trunk(x)
        logits = self.net.head_for(task)(features)
        loss = F.cross_entropy(logits, y)
        if self.task_id > 0:
            loss = loss + self.lamb * self.distillation(features, self.teacher_outputs(x) if targets is None else targets)
        return loss, logits

    def distilled_heads(self) -> list[int]:
        return [self.task_id] if self.variant == "gem" else list(range(self.task_id))

    @torch.no_grad()
    def teacher_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The frozen copy's logits of every distilled head (paper: the old tasks'; gem: the current one's)."""
        features = self.old.features(x)
        return [self.old.net.head_for(u)(features) for u in self.distilled_heads()]

    def distillation(self, features: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        heads = [self.net.head_for(u)(features) for u in self.distilled_heads()]
        if self.variant == "gem":
            return legacy_kl(heads[0], targets[0], self.T)
        return sum(soft_cross_entropy(new, old, self.T, self.eps) for new, old in zip(heads, targets))

    # --- the paper's recorded responses -------------------------------------------------------------------------
    def train_sources(self, data, t):
        """The task's batches carry each sample's position instead of its label: the label and the teacher's
        outputs, recorded once at task start (`record_targets`, as the paper records y_o before training), are
        looked up by it. The same numbers as a teacher pass per step (no augmentation, teacher in eval mode),
        without its cost in every epoch."""
        self._sources = super().train_sources(data, t)
        positions, start = [], 0
        for s in self._sources:
            positions.append(BatchSource(s.x, torch.arange(start, start + len(s.y), device=s.y.device), s.task,
                                         s.transform))
            start += len(s.y)
        return positions

    @torch.no_grad()
    def record_targets(self) -> None:
        self._labels = torch.cat([s.y for s in self._sources])
        self._targets = None
        if self.task_id == 0:
            return
        recorded = [self.teacher_outputs(x) for s in self._sources
                    for x, _, _ in s.batches(self.hparams.eval_batch_size)]
        self._targets = [torch.cat(parts) for parts in zip(*recorded)]

    def training_loss(self, x, positions, task):
        targets = None if self._targets is None else [t[positions] for t in self._targets]
        return self.objective(x, self._labels[positions], task, targets)[0]

    def validation_objective(self, x, y, task):
        return self.objective(x, y, task)

    # --- the schedule within a task -----------------------------------------------------------------------------
    def _warming_up(self) -> bool:
        return self.variant == "paper" and self.task_id > 0 and self.current_epoch < self.warmup_epochs

    def on_train_start(self):
        self.old.eval()
        self.record_targets()
        if self.variant == "gem" and self.trainer.max_epochs == 1:
            log.warning("approach.variant=gem trains nothing with one epoch per task: its first epoch of every task "
                        "only records targets (as the GEM/BCL code); give trainer.max_epochs >= 2")

    def training_step(self, batch, batch_idx):
        if self.variant == "gem" and self.current_epoch == 0:
            return None  # the legacy first epoch: no optimizer step
        return super().training_step(batch, batch_idx)

    def on_before_optimizer_step(self, optimizer):
        """Warm-up: every gradient but the new head's is dropped before the step (and before clipping). The whole
        objective still runs backward, so under DDP every trained parameter gets its gradient reduced as usual."""
        if self._warming_up():
            new_head = {id(p) for p in self.net.head_for(self.task_id).parameters()}
            for p in self.trainable_parameters():
                if id(p) not in new_head:
                    p.grad = None

    def on_train_end(self):
        self._sources, self._labels, self._targets = [], None, None  # lets the stream free the task's device copy
        self.old.snapshot(self.net)
        self.old.train()  # as the rest of the module between fits (Lightning warns about eval modules at fit start)
