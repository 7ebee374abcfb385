"""Train everything on the first task, then only the task heads (the trunk is frozen from task 2 on)."""
from cl.approaches.base import ContinualApproach


class SGDFrozen(ContinualApproach):
    def on_train_start(self):
        self.net.trunk.requires_grad_(self.task_id == 0)
