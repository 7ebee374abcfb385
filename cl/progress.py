"""A tqdm progress bar that says which task of the stream is training (one bar per epoch, no validation bars)."""
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm


class TaskProgressBar(TQDMProgressBar):
    def on_train_epoch_start(self, trainer, pl_module):
        super().on_train_epoch_start(trainer, pl_module)
        self.train_progress_bar.set_description(
            f"task {pl_module.task_id + 1}/{pl_module.n_tasks} epoch {trainer.current_epoch}")

    def init_validation_tqdm(self):
        return Tqdm(disable=True)
