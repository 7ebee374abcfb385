"""A separate network per task: task t trains its own trunk and head from a fresh initialization, or from task t−1's
network (`finetune`, GEM's `--finetune yes`). `width_divisor: d` gives every task an MLP d times narrower than the
configured one, with its own head (GEM's `independent`: hidden width nh / T, so that the T networks together have
about the parameters of one)."""
from torch import nn

from cl.approaches.base import ContinualApproach
from cl.config.options import Bool, Int, options
from cl.errors import ConfigError
from cl.models.mlp import MLP
from cl.models.network import TaskNetwork, reinitialized_copy


@options(width_divisor=Int(ge=1, optional=True), finetune=Bool())
class Independent(ContinualApproach):
    def __init__(self, net: TaskNetwork, width_divisor: int | None = None, finetune: bool = False, **optimizer):
        super().__init__(net, **optimizer)
        self.width_divisor, self.finetune = width_divisor, finetune

    def setup_stream(self, stream):
        super().setup_stream(stream)
        if not self.net.multi_head:
            raise ConfigError("approach=independent trains a separate network per task and needs one head per task; "
                              "use model.head=multi")
        if self.width_divisor:
            if not isinstance(self.net.trunk, MLP):
                raise ConfigError(f"approach.width_divisor narrows MLP trunks only; model={self.net.name} has another "
                                  f"trunk: set approach.width_divisor=null")
            hidden = [max(1, m.out_features // self.width_divisor) for m in self.net.trunk if isinstance(m, nn.Linear)]
            self.trunks = nn.ModuleList(MLP(stream.input_shape, hidden) for _ in stream.tasks)
            self.heads = nn.ModuleList(nn.Linear(hidden[-1], task.n_classes) for task in stream.tasks)
            return
        # the network's own trunk serves task 1; the other tasks get fresh re-initializations of it
        self.extra_trunks = nn.ModuleList(reinitialized_copy(self.net.trunk, self.net.linear_init) for _ in range(len(stream) - 1))

    def trunk_for(self, task: int) -> nn.Module:
        if self.width_divisor:
            return self.trunks[task]
        return self.net.trunk if task == 0 else self.extra_trunks[task - 1]

    def head_for(self, task: int) -> nn.Linear:
        return self.heads[task] if self.width_divisor else self.net.heads[task]

    def forward(self, x, task):
        return self.head_for(int(task))(self.trunk_for(int(task))(x))

    def trainable_parameters(self):
        return self.net.trunk_parameters(self.trunk_for(self.task_id)) + list(self.head_for(self.task_id).parameters())

    def on_train_start(self):
        t = self.task_id
        # at the task's first step only: a fit resumed inside the task already holds its partly trained network
        if self.finetune and t > 0 and self.trainer.global_step == 0:
            self.trunk_for(t).load_state_dict(self.trunk_for(t - 1).state_dict())
            previous, head = self.head_for(t - 1), self.head_for(t)
            if previous.weight.shape == head.weight.shape:
                head.load_state_dict(previous.state_dict())

    def cl_state_bytes(self) -> int:
        """The networks of the earlier tasks, kept so each task is evaluated with its own (their heads too where
        they are the approach's own)."""
        kept = [m for u in range(self.task_id)
                for m in ((self.trunk_for(u), self.heads[u]) if self.width_divisor else (self.trunk_for(u),))]
        return sum(p.numel() * p.element_size() for m in kept for p in m.parameters())
