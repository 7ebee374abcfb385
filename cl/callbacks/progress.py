"""Training progress: a tqdm bar per epoch on a terminal; one line per epoch when stdout is a file or a pipe (CI,
a cluster job's log), where a bar would write a carriage-return redraw for every refresh. The run's train.log gets
the epoch lines either way (cl/run/run_dir.py run_log)."""
from __future__ import annotations

import sys
import time

from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm, convert_inf

from cl.config.options import Int, options
from cl.run.run_dir import to_run_log


class EpochClock:
    """Times a task's epochs and writes its epoch lines: task, epoch, training loss, validation loss and accuracy,
    the learning rate, the patience of a schedule that has one (`patience 2/5`: epochs without improvement of the 5
    it waits), the epoch's seconds and the time the task's remaining epochs take at this pace (`task ETA ≤ 4m10s`,
    `≤` where the schedule may end the task early)."""

    def __init__(self):
        self.epoch_t0 = self.fit_t0 = 0.0
        self.fit_epochs = 0

    def fit_started(self):
        # a fit resumed inside an epoch (a mid-task checkpoint) gets no on_train_epoch_start from Lightning: its first
        # epoch is timed from here (the part of it this process trains)
        self.epoch_t0 = self.fit_t0 = time.perf_counter()
        self.fit_epochs = 0

    def epoch_started(self):
        self.epoch_t0 = time.perf_counter()

    def epoch_line(self, trainer, pl_module) -> str:
        """The line of the epoch that just ended (call once per epoch, at its end)."""
        now = time.perf_counter()
        self.fit_epochs += 1
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
        lr = learning_rate(trainer)
        if lr is not None:
            parts.append(f"lr {lr:.3g}")
        schedules = [cb for cb in trainer.callbacks if hasattr(cb, "progress_text")]
        parts += [cb.progress_text() for cb in schedules]
        parts.append(f"{now - self.epoch_t0:.2f} s")
        left = trainer.max_epochs - trainer.current_epoch - 1
        if left > 0 and not trainer.should_stop:
            early = any(getattr(cb, "stops_early", False) for cb in schedules)
            eta = (now - self.fit_t0) / self.fit_epochs * left
            parts.append(f"task ETA {'≤ ' if early else ''}{duration(eta)}")
        return "  ".join(parts)


class TaskProgressBar(TQDMProgressBar):
    """A tqdm bar that says which task of the stream is training (one bar per epoch, no validation bars), epochs
    counted from 1; the epoch lines go to the run's train.log only."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._clock = EpochClock()

    @property
    def train_description(self) -> str:  # the bar's first draw already says it (not Lightning's "Training")
        try:
            return describe_epoch(self.trainer, self.trainer.lightning_module)
        except (AttributeError, TypeError):  # not a task of a stream (e.g. a benchmark's module)
            return super().train_description

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        # a fit resumed inside an epoch gets no on_train_epoch_start (Lightning): the bar is set up here for it
        self.train_progress_bar.total = convert_inf(self.total_train_batches)
        self._describe(trainer, pl_module)
        self._clock.fit_started()

    def on_train_epoch_start(self, trainer, pl_module):
        # Lightning's, with this epoch's description from the first draw (Lightning's says "Epoch 0" first)
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.set_description(describe_epoch(trainer, pl_module), refresh=False)
        self.train_progress_bar.reset(total=convert_inf(self.total_train_batches))
        self.train_progress_bar.initial = 0
        self._clock.epoch_started()

    def on_train_epoch_end(self, trainer, pl_module):
        super().on_train_epoch_end(trainer, pl_module)
        line = self._clock.epoch_line(trainer, pl_module)
        if trainer.is_global_zero:
            to_run_log(line)

    def _describe(self, trainer, pl_module):
        self.train_progress_bar.set_description(describe_epoch(trainer, pl_module))

    def init_validation_tqdm(self):
        return Tqdm(disable=True)


class EpochLines(ProgressBar):
    """One line per finished epoch (EpochClock), printed."""

    def __init__(self):
        super().__init__()
        self._enabled = True
        self._clock = EpochClock()

    def disable(self):
        self._enabled = False

    def enable(self):
        self._enabled = True

    def on_train_start(self, trainer, pl_module):
        self._clock.fit_started()

    def on_train_epoch_start(self, trainer, pl_module):
        self._clock.epoch_started()

    def on_train_epoch_end(self, trainer, pl_module):
        line = self._clock.epoch_line(trainer, pl_module)
        if self._enabled and trainer.is_global_zero:
            print(line, flush=True)


def describe_epoch(trainer, pl_module) -> str:
    """`task 1/5 epoch 1/200`: epochs counted from 1, as in the epoch lines."""
    return f"task {pl_module.task_id + 1}/{pl_module.n_tasks} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"


def learning_rate(trainer) -> float | None:
    """The learning rate of the task's optimizer (its first parameter group), None without one."""
    try:
        return float(trainer.optimizers[0].param_groups[0]["lr"])
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def duration(seconds: float) -> str:
    """45s, 12m05s, 3h07m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@options(refresh_rate=Int(ge=0))
def task_progress(refresh_rate: int = 10) -> ProgressBar:
    """The bar on a terminal, epoch lines otherwise."""
    return TaskProgressBar(refresh_rate=refresh_rate) if sys.stdout.isatty() else EpochLines()
