"""Training progress: a tqdm bar per epoch on a terminal; one line per epoch when stdout is a file or a pipe (CI,
a cluster job's log), where a bar would write a carriage-return redraw for every refresh."""
from __future__ import annotations

import sys
import time

from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm, convert_inf


class TaskProgressBar(TQDMProgressBar):
    """A tqdm bar that says which task of the stream is training (one bar per epoch, no validation bars)."""

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        # a fit resumed inside an epoch gets no on_train_epoch_start (Lightning): the bar is set up here for it
        self.train_progress_bar.total = convert_inf(self.total_train_batches)
        self._describe(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module):
        super().on_train_epoch_start(trainer, pl_module)
        self._describe(trainer, pl_module)

    def _describe(self, trainer, pl_module):
        self.train_progress_bar.set_description(
            f"task {pl_module.task_id + 1}/{pl_module.n_tasks} epoch {trainer.current_epoch}")

    def init_validation_tqdm(self):
        return Tqdm(disable=True)


class EpochLines(ProgressBar):
    """One line per finished epoch: task, epoch, training loss, validation loss and accuracy, seconds."""

    def __init__(self):
        super().__init__()
        self._enabled = True
        self._t0 = 0.0

    def disable(self):
        self._enabled = False

    def enable(self):
        self._enabled = True

    def on_train_start(self, trainer, pl_module):
        # a fit resumed inside an epoch (a mid-task checkpoint) gets no on_train_epoch_start from Lightning: its first
        # epoch is timed from here (the part of it this process trains)
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if not (self._enabled and trainer.is_global_zero):
            return
        parts = [f"task {pl_module.task_id + 1}/{pl_module.n_tasks}",
                 f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        loss = pl_module.epoch_loss()
        if loss is not None:
            parts.append(f"train/loss {loss:.4f}")
        metrics = trainer.callback_metrics
        if "val/loss" in metrics:
            parts.append(f"val/loss {float(metrics['val/loss']):.4f}")
        if "val/acc" in metrics:
            parts.append(f"val/acc {100 * float(metrics['val/acc']):.2f}%")
        parts.append(f"{time.perf_counter() - self._t0:.2f} s")
        print("  ".join(parts), flush=True)


def task_progress(refresh_rate: int = 10) -> ProgressBar:
    """The bar on a terminal, epoch lines otherwise."""
    return TaskProgressBar(refresh_rate=refresh_rate) if sys.stdout.isatty() else EpochLines()
