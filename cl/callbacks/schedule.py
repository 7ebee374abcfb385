"""Learning-rate schedules as callbacks. The HAT/BLIP schedule: model selection on validation loss, lr ÷ lr_factor
after lr_patience epochs without improvement, stop once lr < lr_min, restore the best weights at task end. And the
MAS codes' step decay.
"""
from __future__ import annotations

import math

from pytorch_lightning import Callback

from cl.config.options import Float, Int, options


@options(lr_patience=Int(ge=1), lr_factor=Float(gt=1), lr_min=Float(gt=0))
class PatienceSchedule(Callback):
    needs_validation = True  # the pipeline refuses a stream without a validation split for it
    stops_early = True  # a task may end before trainer.max_epochs (the epoch lines' ETA says ≤)

    def __init__(self, lr_patience: int = 5, lr_factor: float = 3.0, lr_min: float = 1e-4, monitor: str = "val/loss"):
        self.lr_patience, self.lr_factor, self.lr_min, self.monitor = lr_patience, lr_factor, lr_min, monitor
        self._restored = False

    def on_fit_start(self, trainer, pl_module):
        if self._restored:  # a fit resumed from a mid-task checkpoint continues the task's schedule
            self._restored = False
            return
        self.best = math.inf
        self.best_state = None
        self.patience = self.lr_patience
        self.lr = pl_module.lr

    def state_dict(self) -> dict:
        return {"best": self.best, "best_state": self.best_state, "patience": self.patience, "lr": self.lr}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best, self.best_state = state_dict["best"], state_dict["best_state"]
        self.patience, self.lr = state_dict["patience"], state_dict["lr"]
        self._restored = True

    def progress_text(self) -> str:
        """For the epoch lines (cl/callbacks/progress.py): epochs without improvement of the lr_patience it waits."""
        return f"patience {self.lr_patience - self.patience}/{self.lr_patience}"

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        loss = float(trainer.callback_metrics[self.monitor])
        if loss < self.best:
            self.best, self.patience = loss, self.lr_patience
            self.best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            return
        self.patience -= 1
        if self.patience > 0:
            return
        self.lr /= self.lr_factor
        self.patience = self.lr_patience
        if self.lr < self.lr_min:
            trainer.should_stop = True
            return
        for opt in trainer.optimizers:  # as the official code: a fresh optimizer at the new learning rate
            opt.state.clear()
            for group in opt.param_groups:
                group["lr"] = self.lr

    def on_train_end(self, trainer, pl_module):
        if self.best_state is not None:
            pl_module.load_state_dict(self.best_state)


@options(step_size=Int(ge=1), gamma=Float(gt=0, le=1))
class StepDecay(Callback):
    """lr = the task's lr × gamma^(epoch // step_size), set at the start of every epoch of every task (the MAS codes'
    `exp_lr_scheduler`; the re-implementation: ×0.1 every 20 epochs). Stateless, so a resumed task gets the same lr."""

    def __init__(self, step_size: int = 20, gamma: float = 0.1):
        self.step_size, self.gamma = step_size, gamma

    def on_train_epoch_start(self, trainer, pl_module):
        lr = pl_module.lr * self.gamma ** (trainer.current_epoch // self.step_size)
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
