"""Train everything on the first task, then only the task heads (the trunk is frozen from task 2 on)."""
from cl.approaches.base import ContinualApproach


class SGDFrozen(ContinualApproach):
    def trainable_parameters(self):
        head = list(self.net.head_for(self.task_id).parameters())
        return self.net.trunk_parameters() + head if self.task_id == 0 else head
