"""The approach API: every continual-learning method is a LightningModule built on `ContinualApproach`.

What a new approach overrides (all optional):
- `on_train_start` / `on_train_end`: task-start and task-end work (Lightning hooks; `self.task_id` is the task).
  The task loop runs a fresh `Trainer.fit` per task, so these run once per task, after the schedule callback has
  restored the best-validation weights.
- `penalty()`: a regularizer added to the task loss (EWC, MAS, SI, ...).
- `training_loss(x, y, task)`: the whole per-batch loss, for methods that change more than a penalty.
- `validation_objective(x, y, task)`: the validation loss and logits (default: cross-entropy).
- `train_sources(data, t)` / `valid_sources(data, t)`: what to train and validate on for task t (joint training
  uses every task so far; replay methods add memories).
- `trainable_parameters()` / `trained_tasks()`: what task t trains; the rest is frozen for the task.
- `forward(x, task)`: logits used for training and evaluation (e.g. `independent` swaps in its per-task trunk).
- `predict(x, task)`: the labels evaluation scores (default: the argmax of `forward`; iCaRL: the nearest mean of
  exemplars); `accuracy(source)` shards the test batches over DDP ranks around it.
- `on_before_optimizer_step(optimizer)` (Lightning's hook): work between backward and the step (a regularizer's
  penalty, HAT's gradient compensation). Code that steps an optimizer by hand (manual optimization, e.g. the replay
  approaches' `sgd_step`) runs it through `call_before_optimizer_step_hooks(optimizer)`, as Lightning would.
- `on_after_optimizer_step()`: work after every optimizer step (e.g. BLIP's projection), kept out of the loop.
- `approach_info()`: a JSON-able dict stored in `results.json` under `approach_info`.
Per-parameter state that must survive checkpoints belongs in registered buffers (state_dict carries them).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from cl.config.options import Float, Int, Text, options
from cl.run.distributed import rank_block, sum_over_ranks
from cl.errors import TrainingError
from cl.models.modes import evaluating
from cl.models.network import TaskNetwork
from data.tensor_loader import BatchSource

if TYPE_CHECKING:
    from data.device_stream import DeviceStream


# Lightning sets `_current_fx_name` around every hook call (~44 times per training step); these plain attributes
# skip nn.Module.__setattr__'s parameter/module/buffer checks, a measurable share of the per-step overhead
_PLAIN_ATTRIBUTES = frozenset({"_current_fx_name", "_loss_sum", "_n_batches"})


@options(name=Text(), lr=Float(gt=0), momentum=Float(ge=0, lt=1), weight_decay=Float(ge=0), batch_size=Int(ge=1),
         eval_batch_size=Int(ge=1))
class ContinualApproach(pl.LightningModule):
    batches_per_step = 1  # mini-batches the loop hands each training_step (online approaches take chunks)

    def __setattr__(self, name, value):
        if name in _PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def __init__(self, net: TaskNetwork, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 batch_size: int = 64, eval_batch_size: int = 1000, name: str | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.name = name or type(self).__name__.lower()
        self.n_tasks = 0
        self.lr = lr
        self.batch_size = batch_size  # this task's mini-batch size (the loop sets it per task)
        self.task_id = 0
        self.step_offset = 0  # optimizer steps of earlier tasks: logger steps keep increasing across tasks
        self._loss_sum: torch.Tensor | None = None
        self._n_batches = 0

    def setup_stream(self, stream) -> None:
        """Called once, before any training, with the whole stream (task count, classes, input shape).
        Raise `ConfigError` here for a stream/model/approach combination that cannot work."""
        self.n_tasks = len(stream)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["cl_task_id"] = self.task_id
        checkpoint["cl_task_step_offset"] = self.step_offset  # optimizer steps before this task
        checkpoint["cl_step_offset"] = self.step_offset + self.trainer.global_step

    # --- data: what each task trains and validates on ------------------------------------------------------
    def train_sources(self, data: "DeviceStream", t: int) -> list[BatchSource]:
        return [data.source(t, "train")]

    def valid_sources(self, data: "DeviceStream", t: int) -> list[BatchSource]:
        return [data.source(t, "valid")]

    # --- model ------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, task: int | torch.Tensor) -> torch.Tensor:
        return self.net(x, task)

    def penalty(self) -> torch.Tensor | float:
        return 0.0

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, task: int | torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(x, task), y) + self.penalty()

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        self.on_after_optimizer_step()

    def on_after_optimizer_step(self) -> None:
        """Work after every optimizer step (e.g. BLIP's projection into the frozen bits' box)."""

    def call_before_optimizer_step_hooks(self, optimizer: torch.optim.Optimizer) -> None:
        """For code that steps `optimizer` by hand, right before `optimizer.step()` (and `on_after_optimizer_step()`
        right after): the hooks Lightning's optimization runs between backward and the step, which a bare optimizer
        skips: every callback's `on_before_optimizer_step`, then this module's (a regularizer's penalty)."""
        trainer = self._trainer
        if trainer is not None:
            for callback in trainer.callbacks:
                callback.on_before_optimizer_step(trainer, self, optimizer)
        self.on_before_optimizer_step(optimizer)

    def trained_tasks(self) -> list[int]:
        """Tasks whose heads this task trains."""
        return [self.task_id]

    def trainable_parameters(self) -> list:
        """What this task trains: the trunk (less what it keeps frozen) and the heads of `trained_tasks()`."""
        heads = {id(h): h for h in (self.net.head_for(t) for t in self.trained_tasks())}.values()
        return self.net.trunk_parameters() + [p for h in heads for p in h.parameters()]

    def setup(self, stage: str):
        # freeze everything this task does not train before the strategy wraps the module: DDP then neither
        # waits for gradients of other tasks' heads nor syncs them, and the optimizer only sees what trains
        self.requires_grad_(False)
        for p in self.trainable_parameters():
            p.requires_grad_(True)
        self.net.start_task(self.task_id)

    def configure_optimizers(self):
        # a new Trainer per task re-creates the optimizer at every task start, as the official BLIP/HAT code does
        return torch.optim.SGD(self.trainable_parameters(), lr=self.lr, momentum=self.hparams.momentum,
                               weight_decay=self.hparams.weight_decay)

    # --- Lightning steps --------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, y, task = batch
        loss = self.training_loss(x, y, task)
        detached = loss.detach()  # summed on the device: no host sync per step
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        self._n_batches += 1
        return loss

    def on_train_epoch_start(self):
        self._loss_sum, self._n_batches = None, 0

    def restore_epoch_loss(self, loss_sum: float | None, n_batches: int) -> None:
        """The running loss of an epoch interrupted by a mid-task checkpoint (see cl/run/checkpointing.py)."""
        self._loss_sum = None if loss_sum is None else torch.tensor(loss_sum, device=self.device)
        self._n_batches = n_batches

    def validation_objective(self, x: torch.Tensor, y: torch.Tensor,
                             task: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation loss (what the patience schedule selects on) and the logits: the cross-entropy, unless a
        method validates on its whole training objective (LwF: with the distillation, as the HAT/BLIP code)."""
        logits = self(x, task)
        return F.cross_entropy(logits, y), logits

    def validation_step(self, batch, batch_idx):
        x, y, task = batch
        loss, logits = self.validation_objective(x, y, task)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, logger=False,
                 batch_size=len(y), sync_dist=True)
        self.log("val/acc", (logits.argmax(1) == y).float().mean(), on_epoch=True, prog_bar=True, logger=False,
                 batch_size=len(y), sync_dist=True)

    def epoch_loss(self) -> float | None:
        """Mean training loss of the epoch so far (None before its first batch)."""
        return None if self._n_batches == 0 else float(self._loss_sum) / self._n_batches

    def on_train_epoch_end(self):
        train_loss = self.epoch_loss()
        if train_loss is None:
            return
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"the training loss became {train_loss} in task {self.task_id + 1} (epoch {self.current_epoch + 1}); "
                f"lower approach.lr (now {self.lr:g}) or the approach's regularization strength")
        self.log("train/loss", train_loss, prog_bar=True, logger=False)
        metrics = {"train/loss": train_loss, "task": self.task_id, "epoch": self.current_epoch,
                   "lr": self.trainer.optimizers[0].param_groups[0]["lr"]}
        for key in ("val/loss", "val/acc"):
            if key in self.trainer.callback_metrics:
                metrics[key] = float(self.trainer.callback_metrics[key])
        self.log_to_loggers(metrics)

    # --- helpers for the loop ---------------------------------------------------------------------------------
    @property
    def logger_step(self) -> int:
        return self.step_offset + (self.trainer.global_step if self._trainer is not None else 0)

    def log_to_loggers(self, metrics: dict, step: int | None = None):
        """Log straight to the Trainer's loggers with a step that keeps growing across tasks (each task has its
        own Trainer, whose global_step restarts at 0). Loggers are rank-zero only."""
        if self._trainer is None:
            return
        for lg in self.trainer.loggers:
            lg.log_metrics(metrics, step=self.logger_step if step is None else step)

    def predict(self, x: torch.Tensor, task: int | torch.Tensor) -> torch.Tensor:
        """The labels of a batch that evaluation scores (in eval mode, without gradients)."""
        return self(x, task).argmax(1)

    @torch.inference_mode()
    def accuracy(self, source: BatchSource) -> float:
        """The fraction of `source` that `predict` gets right. Under DDP each rank predicts its block of the
        evaluation batches, the very batches one process forms (so each sample's prediction is computed as there),
        and the two counts are all-reduced: every rank returns the accuracy of the whole set, the same number."""
        size = self.hparams.eval_batch_size
        block = rank_block(-(-len(source.y) // size))
        share = source.part(block.start * size, block.stop * size)
        correct = torch.zeros((), dtype=torch.long, device=source.y.device)
        with evaluating(self):
            for x, y, task in share.batches(size):
                correct += (self.predict(x, task) == y).sum()
        right, total = sum_over_ranks([int(correct), len(share.y)], source.y.device)
        return right / total

    def approach_info(self) -> dict:
        return {}

    def figure_files(self) -> list[str]:
        """The files `write_figures` writes into the run dir (logged to W&B as images)."""
        return []

    def write_figures(self, run_dir) -> None:
        """Approach-specific plots, drawn once when the run ends or is interrupted (e.g. BLIP's bits.png)."""

    def cl_state_bytes(self) -> int:
        """Bytes the approach keeps beyond the network itself (importances, anchors, memories, bit counts)."""
        net_tensors = {id(t) for t in list(self.net.parameters()) + list(self.net.buffers())}
        return sum(t.numel() * t.element_size() for t in list(self.parameters()) + list(self.buffers())
                   if id(t) not in net_tensors)
