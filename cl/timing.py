"""Per-task wall-clock split into training and task-end work (the approach's `on_train_end`)."""
import time

from pytorch_lightning import Callback


class TaskTimer(Callback):
    """Must be the last callback: its `on_train_end` runs after the others' (e.g. the schedule's best-weight
    restore) and before the LightningModule's, whose task-end work is timed up to `on_fit_end`."""

    def __init__(self):
        self.train_seconds = self.task_end_seconds = 0.0
        self._t = 0.0

    def on_train_start(self, trainer, pl_module):
        self._t = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        now = time.perf_counter()
        self.train_seconds, self._t = now - self._t, now

    def on_fit_end(self, trainer, pl_module):
        self.task_end_seconds = time.perf_counter() - self._t
