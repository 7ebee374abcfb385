"""The MNIST-family streams and the device-side batching."""
import gc
import gzip
import weakref
from pathlib import Path

import pytest
import torch

from data.device_stream import DeviceStream
from data import streams
from data.mnist import load_mnist
from data.stream import InputTransform, Split
from data.tensor_loader import BatchSource, TaskBatches


def test_digits5_is_five_disjoint_two_class_tasks():
    s = streams.digits5()
    assert len(s) == 5 and s.input_shape == (1, 8, 8)
    assert [t.classes for t in s.tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    for t in s.tasks:
        for split in (t.train, t.valid, t.test):
            assert set(split.y.tolist()) == {0, 1}
        assert len(t.train) + len(t.valid) + len(t.test) > 300
    # the test split does not depend on the run's seed (comparable across seeds); the validation split does
    other = streams.digits5(seed=1)
    assert torch.equal(s.tasks[0].test.x, other.tasks[0].test.x)
    assert not torch.equal(s.tasks[0].valid.x, other.tasks[0].valid.x)


def test_class_order_sets_local_labels():
    s = streams.digits5(tasks=[[3, 1], [0, 2]])
    t = s.tasks[0]
    assert t.classes == [3, 1]
    full = streams.digits5(tasks=[[1, 3], [0, 2]]).tasks[0]
    assert len(t.test) == len(full.test)
    assert (t.test.y == 1 - full.test.y).all()  # class 3 is label 0 here, label 1 there


def test_valid_from_train_reproduces_the_official_protocol():
    t = streams.digits5(valid_from_train=True).tasks[0]
    assert t.valid is t.train


def test_split_mnist_on_real_mnist(mnist_dir):
    s = streams.split_mnist(mnist_dir, valid_from_train=True)
    sizes = [len(t.train) for t in s.tasks]
    assert sum(sizes) == 60000 and sum(len(t.test) for t in s.tasks) == 10000
    assert s.tasks[0].train.x.dtype == torch.uint8 and s.tasks[0].train.x.shape[1:] == (1, 28, 28)


def test_uncompressed_idx_files_load_like_the_gz_ones(mnist_dir, tmp_path):
    for gz in Path(mnist_dir, "mnist").glob("*.gz"):
        (tmp_path / "mnist").mkdir(exist_ok=True)
        (tmp_path / "mnist" / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    raw, packed = load_mnist(tmp_path, allow_download=False), load_mnist(mnist_dir, allow_download=False)
    assert all(torch.equal(raw[k], packed[k]) for k in packed)
    assert packed["x_train"].dtype == torch.uint8 and packed["x_train"].shape == (60000, 1, 28, 28)


def test_pmnist_permutations_are_seeded_and_shared_data(mnist_dir):
    a = streams.permuted_mnist(mnist_dir, n_tasks=3, seed=0)
    b = streams.permuted_mnist(mnist_dir, n_tasks=3, seed=0)
    c = streams.permuted_mnist(mnist_dir, n_tasks=3, seed=1, first_unpermuted=True)
    perms = [t.transform.permutation for t in a.tasks]
    assert all(torch.equal(p, q.transform.permutation) for p, q in zip(perms, b.tasks))
    assert not torch.equal(perms[0], perms[1])
    assert c.tasks[0].transform.permutation is None and not torch.equal(perms[1], c.tasks[1].transform.permutation)
    assert a.tasks[0].train.x is a.tasks[2].train.x  # one copy of the images; permutations are applied per batch
    assert sorted(perms[1].tolist()) == list(range(784))


def test_rotation_by_90_degrees_matches_rot90():
    img = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    img[0, 0, 3:10, 5:20] = 200
    rotated = streams.rotate(img, 90.0)
    assert torch.equal(rotated, torch.rot90(img, 1, dims=(2, 3)))  # counter-clockwise, as PIL


def test_input_transform_normalizes_and_permutes():
    x = torch.arange(4, dtype=torch.uint8).view(1, 1, 2, 2) * 50
    t = InputTransform((0.5,), (0.25,), permutation=torch.tensor([3, 2, 1, 0]))
    out = t(x)
    expected = ((torch.tensor([150, 100, 50, 0]) / 255.0 - 0.5) / 0.25).view(1, 1, 2, 2)
    assert torch.allclose(out, expected)


def source(n, task=0):
    return BatchSource(torch.arange(n).float().view(n, 1), torch.arange(n), task, InputTransform())


def test_batches_cover_the_data_once_per_epoch_and_reshuffle():
    batches = TaskBatches([source(10)], batch_size=4, shuffle=True, seed=0)
    assert len(batches) == 3
    e1 = torch.cat([y for _, y, _ in batches])
    e2 = torch.cat([y for _, y, _ in batches])
    assert sorted(e1.tolist()) == list(range(10)) == sorted(e2.tolist())
    assert not torch.equal(e1, e2)


def test_mixed_task_batches_carry_task_ids():
    batches = TaskBatches([source(5, task=0), source(3, task=1)], batch_size=8, shuffle=True)
    x, y, task = next(iter(batches))
    assert torch.equal(task, torch.tensor([0] * 5 + [1] * 3))
    assert torch.equal(x.view(-1), y.float())


def test_ddp_ranks_get_equal_disjoint_shares(monkeypatch):
    shares = []
    for rank in range(3):
        monkeypatch.setattr(TaskBatches, "_world", lambda self, r=rank: (r, 3))
        batches = TaskBatches([source(10)], batch_size=2, shuffle=True, seed=5)
        shares.append(torch.cat([y for _, y, _ in batches]).tolist())
        assert len(batches) == 2
    assert all(len(s) == 4 for s in shares)  # ceil(10 / 3), padded by wrapping
    assert set(sum(shares, [])) == set(range(10))


def test_split_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        Split(torch.zeros(3, 2), torch.zeros(2))


def test_closed_batches_let_go_of_their_data():
    batches = TaskBatches([source(10)], batch_size=4)
    batches.close()
    with pytest.raises(RuntimeError, match="closed"):
        next(iter(batches))


def test_device_copies_live_as_long_as_a_source_uses_them():
    stream = streams.digits5()
    stream.tasks[0].transform = InputTransform((0.5,), (0.25,))  # a normalized float copy is made on the device
    data = DeviceStream(stream, "cpu", shared_head=False)
    first = data.source(0, "train")
    assert first.x.dtype == torch.float32 and data.source(0, "train").x is first.x  # one copy while in use
    assert torch.equal(first.x, stream.tasks[0].transform.normalize(stream.tasks[0].train.x))
    copy = weakref.ref(first.x)
    del first
    gc.collect()
    assert copy() is None  # freed with its last source
