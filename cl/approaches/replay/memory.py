"""The episodic memory every replay approach shares (ER, A-GEM, GEM, iCaRL, BCL, FTML): `per_task` slots for each task, filled
as the task's stream goes by, either as a ring (the GEM/BCL codes' "last M samples of the task") or by reservoir
sampling (a uniform sample of everything the task showed so far).

Samples are stored on the training device as the model inputs (float32), or, where the stream's inputs are uint8
images and the float memory would exceed `max_float_bytes` (64 MiB: not MNIST's or CIFAR's memories, ImageNet-sized
ones), compactly as the uint8 pixels (the normalization is undone exactly and redone on read, a cost at every
replay draw). The slots are registered buffers
and the fill counters extra state, so checkpoints carry the memory and a resumed run continues it bit for bit.
Reservoir draws come from a hash of (seed, task, sample number), not from a generator: the same on every rank and
after a resume, whatever else drew random numbers in between.

Named extra fields per slot (`extra={"logits": (10,)}`: a float32 buffer `memory.logits` of shape
(groups, per_task, 10), checkpointed like x and y) are written with the samples (`add(t, x, y, logits=z)`: every
field, each value shaped (len(y), *shape)) and drawn with them (`sample(...).extra["logits"]`). `add` returns the
slots it wrote (and, for BCL, what a full ring evicted); it draws no random numbers, nor does a field change any
draw."""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Mapping, NamedTuple, Sequence

import torch
from torch import nn

from data.image_cache import MemmapImages
from data.stream import InputTransform, Stream

POLICIES = ("ring", "reservoir")
_MASK64 = (1 << 64) - 1


def _mix(value: int) -> int:
    """splitmix64's finalizer: a well-spread 64-bit hash of an integer."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


class Replay(NamedTuple):
    x: torch.Tensor  # model inputs
    y: torch.Tensor
    task: torch.Tensor  # each sample's task
    slot: torch.Tensor  # and its slot in that task's memory
    extra: Mapping[str, torch.Tensor] = MappingProxyType({})  # the memory's extra fields of each sample, by name


class Added(NamedTuple):
    """What one `add` did: batch row rows[i] now sits in slot slots[i] of the task's memory (rows a reservoir skipped
    or replaced by a later row of the batch, and a ring's rows before the batch's last per_task, are in neither);
    `evicted` is what a full ring pushed out to make room, as (x, y) model inputs and labels (BCL trains on it),
    else None."""
    slots: torch.Tensor
    rows: torch.Tensor
    evicted: tuple[torch.Tensor, torch.Tensor] | None = None


class EpisodicMemory(nn.Module):
    def __init__(self, stream: Stream, per_task: int, policy: str = "ring", seed: int = 0,
                 group_tasks: list[int] | None = None, max_float_bytes: int = 64 << 20,
                 extra: Mapping[str, Sequence[int]] | None = None):
        """One group of `per_task` slots per task; or, with `group_tasks`, one group per entry, holding samples of
        that task (iCaRL keeps one group per class). `extra`: named float32 fields stored per slot, by shape."""
        super().__init__()
        self.per_task, self.policy, self.seed = per_task, policy, seed
        group_tasks = list(range(len(stream))) if group_tasks is None else group_tasks
        self.n_tasks = len(group_tasks)
        # uint8 where every task's raw inputs are uint8 (MNIST, CIFAR, disk-cached images) and floats would be large:
        # 4× smaller
        float_bytes = 4 * self.n_tasks * per_task * math.prod(stream.input_shape)
        self.as_uint8 = float_bytes > max_float_bytes and all(
            isinstance(t.train.x, MemmapImages) or t.train.x.dtype == torch.uint8 for t in stream.tasks)
        self.transforms: list[InputTransform] = [stream.tasks[task].transform for task in group_tasks]
        self._stats: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.same_normalization = len({(tuple(tf.mean), tuple(tf.std)) for tf in self.transforms}) == 1
        shape = (self.n_tasks, per_task, *stream.input_shape)
        self.register_buffer("x", torch.zeros(shape, dtype=torch.uint8 if self.as_uint8 else torch.float32))
        self.register_buffer("y", torch.zeros(self.n_tasks, per_task, dtype=torch.long))
        self.extra_names: tuple[str, ...] = tuple(extra or ())
        for name, field_shape in (extra or {}).items():
            if not name.isidentifier() or hasattr(self, name):
                raise ValueError(f"EpisodicMemory: {name!r} cannot name an extra field (not an identifier, or taken)")
            self.register_buffer(name, torch.zeros(self.n_tasks, per_task, *field_shape))
        self.filled = [0] * self.n_tasks  # slots in use per task (host-side: no device sync to read them)
        self.seen = [0] * self.n_tasks  # samples of the task offered so far

    def get_extra_state(self):
        return {"filled": list(self.filled), "seen": list(self.seen)}

    def set_extra_state(self, state):
        self.filled, self.seen = list(state["filled"]), list(state["seen"])

    # --- the stored form ----------------------------------------------------------------------------------------
    def encode(self, t: int, x: torch.Tensor) -> torch.Tensor:
        """Model inputs → stored form. The normalization is per channel (a permutation only moves pixels of
        one-channel images), so undoing it on the model inputs recovers the raw pixels exactly."""
        if not self.as_uint8:
            return x
        mean, std = self._channel_stats(t, x)
        return x.mul(std).add_(mean).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)

    def decode(self, t: int, stored: torch.Tensor) -> torch.Tensor:
        """Stored form → the model inputs, bit for bit: the same operations as `InputTransform.normalize`."""
        if not self.as_uint8:
            return stored
        mean, std = self._channel_stats(t, stored)
        return stored.float().div_(255.0).sub_(mean).div_(std)

    def _channel_stats(self, t: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (t, x.device, x.dim())
        if key not in self._stats:  # made once: two small tensors per step cost as much as the encoding
            self._stats[key] = self.transforms[t].channel_stats(x.device, x.dim())
        return self._stats[key]

    # --- writing ------------------------------------------------------------------------------------------------
    def add(self, t: int, x: torch.Tensor, y: torch.Tensor, **extra: torch.Tensor) -> Added:
        """Offer a batch of task t, with a value for every extra field (`name=tensor` of shape (len(y), *shape)).
        Returns the slots written and the rows that went there, and what a full ring evicted to make room."""
        extra = self._extra_values(extra, len(y))
        n, M = len(y), self.per_task
        start = self.seen[t]
        self.seen[t] += n
        stored = self.encode(t, x)
        if self.policy == "reservoir":
            return self._add_reservoir(t, start, stored, y, extra)
        skipped = max(0, n - M)
        if n > M:  # only the last M of the batch survive a ring
            stored, y, start, n = stored[-M:], y[-M:], start + n - M, M
            extra = {name: v[-M:] for name, v in extra.items()}
        first = start % M
        # slot ranges, not index tensors: a ring write is one or two slice copies
        spans = [(first, min(first + n, M), 0)] + ([(0, first + n - M, M - first)] if first + n > M else [])
        evicted = None
        if self.filled[t] == M:
            evicted = (self.decode(t, torch.cat([self.x[t, a:b] for a, b, _ in spans])),
                       torch.cat([self.y[t, a:b] for a, b, _ in spans]))
        for a, b, offset in spans:
            self.x[t, a:b] = stored[offset:offset + b - a]
            self.y[t, a:b] = y[offset:offset + b - a]
            for name, v in extra.items():
                getattr(self, name)[t, a:b] = v[offset:offset + b - a]
        self.filled[t] = min(M, self.filled[t] + n)
        rows = torch.arange(skipped, skipped + n, device=y.device)
        return Added((rows - skipped + first) % M, rows, evicted)

    def _extra_values(self, given: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
        """The values of every extra field for n samples, as float32 on the memory's device."""
        if set(given) != set(self.extra_names):
            raise TypeError(f"EpisodicMemory: values given for {sorted(given)}, its extra fields are "
                            f"{sorted(self.extra_names)}")
        values = {}
        for name, v in given.items():
            buffer = getattr(self, name)
            if tuple(v.shape) != (n, *buffer.shape[2:]):
                raise ValueError(f"EpisodicMemory: {name} of shape {tuple(v.shape)} for {n} samples; expected "
                                 f"{(n, *buffer.shape[2:])}")
            values[name] = v.detach().to(buffer.device, buffer.dtype)
        return values

    def _add_reservoir(self, t: int, start: int, stored: torch.Tensor, y: torch.Tensor,
                       extra: dict[str, torch.Tensor]) -> Added:
        M = self.per_task
        target = {}  # slot → position in the batch (a later sample drawn to the same slot replaces an earlier one)
        for i in range(len(y)):
            j = start + i  # this sample's number in the task's stream
            slot = j if j < M else _mix(self.seed * 1_000_003 + t * 1_000_000_007 + j) % (j + 1)
            if slot < M:
                target[slot] = i
        slots = torch.tensor(list(target), dtype=torch.long, device=y.device)
        rows = torch.tensor(list(target.values()), dtype=torch.long, device=y.device)
        if target:
            self.x[t].index_copy_(0, slots, stored[rows])
            self.y[t].index_copy_(0, slots, y[rows])
            for name, v in extra.items():
                getattr(self, name)[t].index_copy_(0, slots, v[rows])
        self.filled[t] = min(M, start + len(y))
        return Added(slots, rows)

    def fill(self, t: int, x: torch.Tensor, y: torch.Tensor, **extra: torch.Tensor) -> None:
        """Copies of one sample (x[0], y[0], and its extra fields) in every slot of task t, all counted as held; the
        ring's next write still goes to the slot it would have (BCL-Dual's code fills a task's memories so on its
        first batch)."""
        extra = self._extra_values(extra, len(y))
        self.x[t] = self.encode(t, x[:1])[0]
        self.y[t] = y[0]
        for name, v in extra.items():
            getattr(self, name)[t] = v[0]
        self.filled[t] = self.per_task

    def store(self, t: int, x: torch.Tensor, y: torch.Tensor, **extra: torch.Tensor) -> None:
        """Replace what group t holds with these samples (and their extra fields), in this order (iCaRL's herding
        order)."""
        extra = self._extra_values(extra, len(y))
        self.x[t, :len(y)] = self.encode(t, x)
        self.y[t, :len(y)] = y
        for name, v in extra.items():
            getattr(self, name)[t, :len(y)] = v
        self.filled[t] = self.seen[t] = len(y)

    def truncate(self, t: int, n: int) -> None:
        """Keep group t's first n samples (iCaRL's exemplar reduction)."""
        self.filled[t] = self.seen[t] = min(n, self.filled[t])

    # --- reading ------------------------------------------------------------------------------------------------
    def task(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything task t holds, as model inputs and labels."""
        n = self.filled[t]
        return self.decode(t, self.x[t, :n]), self.y[t, :n]

    def sample(self, tasks: range, n: int) -> Replay | None:
        """min(n, held) samples drawn uniformly without replacement from the tasks in `tasks` (torch's global
        generator, which the task loop seeds and checkpoints), with each sample's task, slot and extra fields.
        None when those tasks hold nothing."""
        sizes = [self.filled[u] for u in tasks]
        total = sum(sizes)
        if total == 0:
            return None
        device = self.y.device
        pick = torch.randperm(total, device=device)[:n]
        if all(s == self.per_task for s in sizes):  # full memories: position = task offset × M + slot
            task_pos, slot = pick // self.per_task, pick % self.per_task
        else:
            ends = torch.tensor(sizes, device=device).cumsum(0)
            task_pos = torch.bucketize(pick, ends, right=True)
            slot = pick - (ends - torch.tensor(sizes, device=device))[task_pos]
        task_ids = task_pos + tasks.start
        flat = task_ids * self.per_task + slot  # one index_select on the flattened slots: cheaper than x[task, slot]
        y = self.y.view(-1).index_select(0, flat)
        stored = self.x.flatten(0, 1).index_select(0, flat)
        extra = {name: getattr(self, name).flatten(0, 1).index_select(0, flat) for name in self.extra_names}
        if not self.as_uint8:
            return Replay(stored, y, task_ids, slot, extra)
        if self.same_normalization:
            return Replay(self.decode(tasks.start, stored), y, task_ids, slot, extra)
        x = torch.empty(stored.shape, dtype=torch.float32, device=device)
        for u in task_ids.unique().tolist():  # tasks that normalize differently (e.g. a mixture of datasets)
            m = task_ids == u
            x[m] = self.decode(u, stored[m])
        return Replay(x, y, task_ids, slot, extra)
