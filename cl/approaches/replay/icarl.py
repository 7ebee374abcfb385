"""iCaRL (Rebuffi et al., CVPR 2017) in the online GEM/BCL setting, class-incremental: one shared head over all
classes, tasks with disjoint classes, and prediction among every class seen so far.

- Exemplars: a budget of `n_memories` samples in all, m = n_memories / (classes seen) per class. At the end of each
  task the old classes' sets are cut to their first m (herding order) and each new class gets m exemplars chosen by
  herding on the L2-normalized trunk features: each pick brings the mean of the picked closest to the class mean.
- Training on each incoming batch: cross-entropy over the classes seen so far, plus `memory_strength` · KL between
  the network's softmax over the old classes and the one recorded for each replayed exemplar at the end of the
  previous task (distillation; a batch of `replay_batch_size` exemplars).
- Prediction: nearest mean of exemplars, the class means of the normalized features of each class's exemplars.
GEM's `icarl.py` differs: it keeps one output slice per task (task-incremental), takes class means on the network
outputs, and distills one exemplar per class per task; its budget and strength (1280 exemplars, 1) are the defaults
here, its lr 1.0 is not (it diverges on smaller networks)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cl.approaches.replay.base import ReplayApproach
from cl.config.options import Float, options
from cl.errors import ConfigError
from cl.models.modes import evaluating
from cl.approaches.replay.memory import EpisodicMemory
from cl.models.network import TaskNetwork


def herding(features: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of up to m rows of `features` (normalized) in herding order: the k-th pick minimizes the distance
    between the mean of the k picked and the mean of all."""
    target = features.mean(0)
    picked_sum = torch.zeros_like(target)
    available = torch.ones(len(features), dtype=torch.bool, device=features.device)
    order = []
    for k in range(1, min(m, len(features)) + 1):
        distance = (target - (picked_sum + features) / k).norm(dim=1).masked_fill(~available, float("inf"))
        i = int(distance.argmin())
        order.append(i)
        picked_sum += features[i]
        available[i] = False
    return torch.tensor(order, dtype=torch.long, device=features.device)


@options(memory_strength=Float(ge=0))
class ICaRL(ReplayApproach):
    def __init__(self, net: TaskNetwork, memory_strength: float = 1.0, **kwargs):
        super().__init__(net, **kwargs)
        self.memory_strength = memory_strength

    def setup_stream(self, stream):
        classes = [c for task in stream.tasks for c in task.classes]
        if self.net.multi_head or len(set(classes)) < len(classes):
            raise ConfigError("approach=icarl is class-incremental: it needs model.head=shared and a stream whose "
                              "tasks have disjoint classes (e.g. split MNIST or Split CIFAR-100, not permuted MNIST)")
        # memory groups are classes, in the order they arrive: task t's are groups task_first_group[t] onwards
        self.task_first_group = [sum(len(t.classes) for t in stream.tasks[:u]) for u in range(len(stream) + 1)]
        if self.replay_slots() < 1:
            raise ConfigError(f"approach.n_memories={self.n_memories} leaves no exemplar per class of the first task "
                              f"({len(stream.tasks[0].classes)} classes)")
        super().setup_stream(stream)  # the memory: make_memory below
        self.register_buffer("group_class", torch.tensor(classes))
        n_out = self.net.heads[0].out_features
        self.register_buffer("exemplar_logits", torch.zeros(len(classes), self.memory.per_task, n_out))
        self.register_buffer("class_means", torch.zeros(len(classes), self.net.trunk.out_dim))
        self.register_buffer("groups_done", torch.zeros((), dtype=torch.long))  # classes with a mean so far

    def replay_slots(self) -> int:
        """Exemplars per class at most: the budget split over the first task's classes."""
        return self.n_memories // self.task_first_group[1]

    def make_memory(self, stream, per_task: int) -> EpisodicMemory:
        """One memory group per class, in the order the classes arrive."""
        return EpisodicMemory(stream, per_task, seed=self.seed,
                              group_tasks=[u for u, task in enumerate(stream.tasks) for _ in task.classes])

    def train_sources(self, data, t):
        self.task_source = super().train_sources(data, t)[0]  # herding picks the task's exemplars at its end
        return [self.task_source]

    # --- training ------------------------------------------------------------------------------------------------------
    def observe(self, x, y, t):
        seen = self.group_class[:self.task_first_group[t + 1]]
        logits = self(x, t)
        loss = F.cross_entropy(logits[:, seen], self.local_labels(seen, y))
        old_groups = self.task_first_group[t]
        replay = self.memory.sample(range(old_groups), self.replay_batch_size) if old_groups else None
        if replay is not None and self.memory_strength:
            old = self.group_class[:old_groups]
            target = F.softmax(self.exemplar_logits[replay.task, replay.slot][:, old], dim=1)
            log_q = F.log_softmax(self(replay.x, t)[:, old], dim=1)
            loss = loss + self.memory_strength * F.kl_div(log_q, target, reduction="batchmean")
        self.sgd_step(loss)
        return loss.detach()

    def local_labels(self, seen: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each global label's position among the seen classes (the columns the loss keeps)."""
        return (y[:, None] == seen[None]).float().argmax(1)

    def remember(self, x, y, t):
        """Exemplars are chosen at the task's end (herding), not from the stream as it passes."""

    # --- task end: exemplars, their logits, the class means ---------------------------------------------------------------
    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net.trunk(x).flatten(1), dim=1)

    @torch.no_grad()
    def on_train_end(self):
        super().on_train_end()
        t, mem = self.task_id, self.memory
        with evaluating(self):
            first, end = self.task_first_group[t], self.task_first_group[t + 1]
            m = self.n_memories // end
            for g in range(first):
                mem.truncate(g, m)
            source = self.task_source
            features = torch.cat([self.features(x) for x, _, _ in source.batches(self.hparams.eval_batch_size)])
            for g in range(first, end):
                rows = (source.y == self.group_class[g]).nonzero().flatten()
                chosen = rows[herding(features[rows], min(m, mem.per_task))]
                mem.store(g, source.inputs(chosen), source.y[chosen])
            for g in range(end):
                ex, _ = mem.task(g)
                self.exemplar_logits[g, :len(ex)] = self(ex, 0)
                self.class_means[g] = F.normalize(self.features(ex).mean(0), dim=0)
            self.groups_done.fill_(end)

    # --- prediction: nearest mean of exemplars ----------------------------------------------------------------------------
    def predict(self, x: torch.Tensor, task: int | torch.Tensor) -> torch.Tensor:
        done = int(self.groups_done)
        if done == 0:  # before the first task ends there are no exemplars: the network's own prediction
            return super().predict(x, task)
        return self.group_class[torch.cdist(self.features(x), self.class_means[:done]).argmin(1)]

    def approach_info(self) -> dict:
        return {**super().approach_info(), "classes_with_exemplars": int(self.groups_done)}
