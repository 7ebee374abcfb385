"""The disk-cache path: `MemmapImages` splits streamed through DataLoader workers give exactly the batches the
in-memory path gives."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data.device_stream import DeviceStream
from data.image_cache import MemmapImages, cache_key, cached_images, take_rows
from data.stream import InputTransform, Split, Stream, Task, split_valid
from data.tensor_loader import BatchSource, TaskBatches


@pytest.fixture
def images(tmp_path) -> tuple[MemmapImages, torch.Tensor]:
    pixels = np.random.RandomState(0).randint(0, 256, (50, 3, 6, 6), dtype=np.uint8)
    path = cached_images(tmp_path, "px", cache_key(n=50), list(pixels), lambda a: a, (3, 6, 6))
    return MemmapImages(path, num_workers=2), torch.from_numpy(pixels)


def test_cache_is_written_once_and_atomically(tmp_path):
    calls = []
    decode = lambda a: (calls.append(1), a)[1]  # noqa: E731
    items = [np.full((1, 2, 2), i, np.uint8) for i in range(4)]
    first = cached_images(tmp_path, "t", cache_key(size=2), items, decode, (1, 2, 2))
    again = cached_images(tmp_path, "t", cache_key(size=2), items, decode, (1, 2, 2))
    assert first == again and len(calls) == 4 and [p.name for p in tmp_path.iterdir()] == [first.name]
    assert cache_key(size=2) != cache_key(size=3)
    with pytest.raises(ZeroDivisionError):  # a failing decode leaves no partial file behind
        cached_images(tmp_path, "u", cache_key(size=9), items, lambda a: 1 / 0, (1, 2, 2))
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_memmap_views_select_rows_without_reading(images):
    mm, pixels = images
    view = mm[torch.tensor([5, 1, 7])][1:]
    assert len(view) == 2 and view.shape == (2, 3, 6, 6)
    assert torch.equal(view.read(np.array([1, 0])), pixels[[7, 1]])
    mask = torch.zeros(50, dtype=torch.bool)
    mask[[3, 4]] = True
    assert torch.equal(mm[mask].read(np.arange(2)), pixels[[3, 4]])


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("n_sources", [1, 2])
def test_streamed_batches_equal_in_memory_batches(images, workers, n_sources):
    mm, pixels = images
    mm.num_workers = workers
    transforms = [InputTransform((0.5,), (0.25,)), InputTransform((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))]
    y = torch.arange(50) % 5

    def sources(x):
        parts = [(slice(0, 50), 0)] if n_sources == 1 else [(slice(0, 30), 0), (slice(30, 50), 1)]
        return [BatchSource(x[s], y[s], task, transforms[task]) for s, task in parts]

    streamed = TaskBatches(sources(mm), 8, shuffle=True, seed=3)
    in_memory = TaskBatches(sources(pixels), 8, shuffle=True, seed=3)
    for _ in range(2):  # two epochs: persistent workers see the new order
        got, want = list(streamed), list(in_memory)
        assert len(got) == len(want) == len(streamed) == 7
        for (xa, ya, ta), (xb, yb, tb) in zip(got, want):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
            assert (ta == tb) if isinstance(ta, int) else torch.equal(ta, tb)


def test_device_stream_serves_memmap_splits(images):
    mm, pixels = images
    y = torch.arange(50) % 2
    train, valid = split_valid(Split(mm, y), 0.2, False, torch.Generator().manual_seed(0))
    task = Task("t", [3, 7], train, valid, Split(mm[:10], y[:10]), InputTransform())
    data = DeviceStream(Stream("s", [task], (3, 6, 6)), "cpu", shared_head=True)
    source = data.source(0, "test").head(4)
    assert isinstance(source.x, MemmapImages) and source.x.device == torch.device("cpu")
    x, labels, _ = next(iter(TaskBatches([source], 100)))
    assert torch.equal(x, pixels[:4].float() / 255) and labels.tolist() == [3, 7, 3, 7]


def test_take_rows_reads_either_kind(images):
    mm, pixels = images
    idx = torch.tensor([4, 0, 9])
    assert torch.equal(take_rows(mm, idx), pixels[idx]) and torch.equal(take_rows(pixels, idx), pixels[idx])
