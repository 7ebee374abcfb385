"""Multi-task upper bound: task t trains on the union of tasks 0..t (each sample through its own head)."""
from cl.approaches.base import ContinualApproach


class Joint(ContinualApproach):
    def trained_tasks(self):
        return list(range(self.task_id + 1))

    def train_sources(self, data, t):
        return [data.source(u, "train") for u in range(t + 1)]

    def valid_sources(self, data, t):
        return [data.source(u, "valid") for u in range(t + 1)]
