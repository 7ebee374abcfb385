"""The episodic memory's named extra fields: written with the samples into the slots `add` reports (ring and
reservoir), carried by a state_dict round trip, and drawn by `sample` aligned with x and y."""
from __future__ import annotations

import copy

import pytest
import torch

from cl.approaches.replay.memory import EpisodicMemory
from data.streams import digits5

WIDTH = 3


def batches(n: int, size: int):
    """digits5-shaped batches whose every pixel is the sample's number, its label that number mod 7, and its extra
    field [number, 2·number, 3·number]: every stored value names the sample it came from."""
    for i in range(n):
        number = torch.arange(i * size, (i + 1) * size)
        x = number.float().view(-1, 1, 1, 1).expand(size, 1, 8, 8).contiguous()
        logits = number.float()[:, None] * torch.arange(1, WIDTH + 1).float()
        yield x, number % 7, logits


def memory(policy: str, per_task: int = 16, seed: int = 3) -> EpisodicMemory:
    return EpisodicMemory(digits5(), per_task, policy, seed=seed, extra={"logits": (WIDTH,)})


def sample_numbers(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0, 0, 0].long()


def test_an_extra_field_is_a_float32_buffer_per_slot_in_the_state_dict():
    mem = memory("ring")
    assert mem.logits.shape == (5, 16, WIDTH) and mem.logits.dtype == torch.float32
    assert "logits" in mem.state_dict() and mem.extra_names == ("logits",)
    assert EpisodicMemory(digits5(), 4).extra_names == ()


@pytest.mark.parametrize("policy", ["ring", "reservoir"])
@pytest.mark.parametrize("size", [5, 40])  # a batch larger than the memory: a ring keeps only its last rows
def test_extra_values_land_in_the_slots_add_reports_with_their_samples(policy, size):
    mem = memory(policy)
    for x, y, logits in batches(12, size):
        held_before = {key: getattr(mem, key).clone() for key in ("x", "y", "logits")}
        added = mem.add(2, x, y, logits=logits)
        assert len(added.slots) == len(added.rows) == len(set(added.slots.tolist()))
        assert torch.equal(mem.x[2, added.slots], x[added.rows])
        assert torch.equal(mem.y[2, added.slots], y[added.rows])
        assert torch.equal(mem.logits[2, added.slots], logits[added.rows])
        untouched = torch.ones(16, dtype=torch.bool)
        untouched[added.slots] = False
        for key in ("x", "y", "logits"):  # no other slot changed
            assert torch.equal(getattr(mem, key)[2, untouched], held_before[key][2, untouched])
    # every slot holds one sample's x, y and field together
    numbers = sample_numbers(mem.x[2])
    assert torch.equal(mem.y[2], numbers % 7)
    assert torch.equal(mem.logits[2], numbers.float()[:, None] * torch.arange(1, WIDTH + 1).float())
    if policy == "ring":
        assert added.evicted is not None and sorted(numbers.tolist()) == list(range(12 * size - 16, 12 * size))


def test_the_fields_do_not_change_what_is_stored_nor_any_draw():
    """A memory with a field holds the same x/y as one without, and draws the same replay batches from the same
    generator state."""
    plain, with_field = EpisodicMemory(digits5(), 16, "reservoir", seed=3), memory("reservoir")
    for x, y, logits in batches(9, 10):
        a, b = plain.add(1, x, y), with_field.add(1, x, y, logits=logits)
        assert torch.equal(a.slots, b.slots) and torch.equal(a.rows, b.rows)
    assert torch.equal(plain.x, with_field.x) and torch.equal(plain.y, with_field.y)
    torch.manual_seed(0)
    r1 = plain.sample(range(3), 7)
    torch.manual_seed(0)
    r2 = with_field.sample(range(3), 7)
    assert torch.equal(r1.x, r2.x) and torch.equal(r1.slot, r2.slot) and dict(r1.extra) == {}


@pytest.mark.parametrize("policy", ["ring", "reservoir"])
def test_extra_fields_survive_a_state_dict_round_trip_and_continue_identically(policy):
    a = memory(policy)
    data = list(batches(9, 10))
    for x, y, logits in data[:5]:
        a.add(0, x, y, logits=logits)
    b = memory(policy)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert torch.equal(a.logits, b.logits) and b.logits.abs().sum() > 0
    for x, y, logits in data[5:]:
        assert torch.equal(a.add(0, x, y, logits=logits).slots, b.add(0, x, y, logits=logits).slots)
    assert torch.equal(a.x, b.x) and torch.equal(a.logits, b.logits)


@pytest.mark.parametrize("policy", ["ring", "reservoir"])
def test_sample_returns_the_fields_aligned_with_x_and_y(policy):
    mem = memory(policy, per_task=8)
    for t in range(3):
        for x, y, logits in batches(3, 5):
            mem.add(t, x + 1000 * t, y, logits=logits + 1000 * t)
    replay = mem.sample(range(3), 20)
    numbers = sample_numbers(replay.x)
    assert set(replay.extra) == {"logits"} and replay.extra["logits"].shape == (20, WIDTH)
    assert torch.equal(replay.extra["logits"], mem.logits[replay.task, replay.slot])
    assert torch.equal(replay.extra["logits"][:, 0].long(), numbers)  # the field of the very sample drawn
    assert torch.equal(replay.task, numbers // 1000)


def test_fill_and_store_write_the_fields_too():
    mem = memory("ring", per_task=4)
    x, y, logits = next(batches(1, 3))
    mem.fill(1, x, y, logits=logits)
    assert torch.equal(mem.logits[1], logits[:1].expand(4, WIDTH))
    mem.store(2, x, y, logits=logits)
    assert torch.equal(mem.logits[2, :3], logits) and mem.filled[2] == 3


def test_add_wants_a_value_of_the_right_shape_for_every_field():
    mem = memory("ring")
    x, y, logits = next(batches(1, 4))
    with pytest.raises(TypeError):
        mem.add(0, x, y)
    with pytest.raises(TypeError):
        mem.add(0, x, y, logits=logits, other=logits)
    with pytest.raises(ValueError):
        mem.add(0, x, y, logits=logits[:, :2])
    assert mem.seen[0] == 0  # a refused write changes nothing
    with pytest.raises(ValueError):
        EpisodicMemory(digits5(), 4, extra={"y": (2,)})  # the name of a field the memory already has
