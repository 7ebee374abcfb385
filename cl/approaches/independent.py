"""A fresh network per task: task t trains its own trunk (and head) from a fresh initialization."""
import copy

from torch import nn

from cl.approaches.base import ContinualApproach
from cl.errors import ConfigError


class Independent(ContinualApproach):
    def setup_stream(self, stream):
        super().setup_stream(stream)
        if not self.net.multi_head:
            raise ConfigError("approach=independent trains a separate network per task and needs one head per task; "
                              "use model.head=multi")
        # trunks[0] is the network's own trunk; the others are independent re-initializations
        extra = []
        for _ in range(len(stream) - 1):
            trunk = copy.deepcopy(self.net.trunk)
            for m in trunk.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            extra.append(trunk)
        self.extra_trunks = nn.ModuleList(extra)

    def trunk_for(self, task: int) -> nn.Module:
        return self.net.trunk if task == 0 else self.extra_trunks[task - 1]

    def forward(self, x, task):
        return self.net(x, task, trunk=self.trunk_for(int(task)))

    def trainable_parameters(self):
        return self.net.trunk_parameters(self.trunk_for(self.task_id)) + list(self.net.heads[self.task_id].parameters())

    def cl_state_bytes(self) -> int:
        """The trunks of earlier tasks, kept so each task is evaluated with its own network."""
        return sum(p.numel() * p.element_size() for u in range(1, self.task_id + 1)
                   for p in self.trunk_for(u - 1).parameters())
