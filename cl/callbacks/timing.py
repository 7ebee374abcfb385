"""Per-task wall-clock split into training and task-end work (the approach's `on_train_end`)."""
import time

from pytorch_lightning import Callback


class TaskTimer(Callback):
    """Must be the last callback: its `on_train_end` runs after the others' (e.g. the schedule's best-weight
    restore) and before the LightningModule's, whose task-end work is timed up to `on_fit_end`.
    `resumed_seconds`: training time the task had before the checkpoint a resumed fit starts from."""

    def __init__(self):
        self.train_seconds = self.task_end_seconds = self.resumed_seconds = 0.0
        self._t = 0.0

    def elapsed(self) -> float:
        """The task's training time so far."""
        return self.resumed_seconds + time.perf_counter() - self._t

    def on_train_start(self, trainer, pl_module):
        self._t = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        now = time.perf_counter()
        self.train_seconds, self._t = self.elapsed(), now
        self.resumed_seconds = 0.0

    def on_fit_end(self, trainer, pl_module):
        self.task_end_seconds = time.perf_counter() - self._t
