"""Image stream loaders on tiny fixtures written in each dataset's native format (tests/fixtures.py)."""
from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import data.cifar
import data.mnist
from cl.errors import ConfigError, DatasetError
from data.cifar import CIFAR10, cifar100_split, cifar_alt, load_cifar
from data.cub import cub
from data.gem_format import gem_file, read_gem_file, write_gem_file
from data.image_cache import MemmapImages
from data.image_files import canonical_file, gray_to_rgb32, shuffled_order
from data.miniimagenet import miniimagenet
from data.mixture import mixture5
from data.notmnist import load_notmnist
from data.svhn import load_svhn
from data.tinyimagenet import tinyimagenet
from tests import fixtures


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fixtures")
    fixtures.write_all(root)
    return root


@pytest.fixture
def tiny_mnist(data_root, monkeypatch) -> Path:
    """The fixture's tiny MNIST accepted by data.mnist (which checks the canonical md5s and shapes)."""
    table = fixtures.write_mnist(data_root)
    monkeypatch.setattr(data.mnist, "FILES", table)
    return data_root


# --- task orders and protocols -------------------------------------------------------------------------------
def test_official_task_orders_for_seed_0():
    assert shuffled_order(10, 0) == [2, 8, 4, 9, 1, 6, 7, 3, 0, 5]
    assert shuffled_order(5, 0) == [2, 0, 1, 3, 4]


def test_cifar_alt_protocol(data_root):
    s = cifar_alt(str(data_root), seed=0)
    assert [t.name for t in s.tasks] == ["c10-2", "c100-3", "c10-4", "c100-4", "c10-1", "c100-1", "c100-2",
                                         "c10-3", "c10-0", "c100-0"]
    assert s.tasks[0].classes == [4, 5] and s.tasks[1].classes == list(range(70, 90))
    assert s.input_shape == (3, 32, 32) and s.n_global_classes == 110
    t = s.tasks[1]  # 20 classes × 2 fixture images: 10 % validation
    assert (len(t.train), len(t.valid), len(t.test)) == (36, 4, 20)
    assert t.train.x.dtype == torch.uint8 and int(t.train.y.max()) == 19
    assert np.allclose(t.transform.mean, np.array([125.3, 123.0, 113.9]) / 255)
    assert np.allclose(t.transform.std, np.array([63.0, 62.1, 66.7]) / 255)


def test_cifar_alt_strict_alternation(data_root):
    names = [t.name for t in cifar_alt(str(data_root), seed=0, strict_alternation=True).tasks]
    assert names == ["c10-2", "c100-3", "c10-4", "c100-4", "c10-1", "c100-1", "c10-3", "c100-2", "c10-0", "c100-0"]


def test_cifar100_split_gem_and_bcl(data_root):
    gem = cifar100_split(str(data_root))
    assert len(gem) == 20 and gem.tasks[3].classes == [15, 16, 17, 18, 19]
    bcl = cifar100_split(str(data_root), relabel=True, n_val_tasks=3, part="cl")
    assert len(bcl) == 17 and bcl.n_global_classes == 85 and bcl.tasks[0].classes == [0, 1, 2, 3, 4]
    val = cifar100_split(str(data_root), relabel=True, n_val_tasks=3, part="val")
    assert len(val) == 3
    # BCL's data/cifar100.py: torch.manual_seed(0), class c becomes torch.randperm(100)[c]; task 0 of `val` holds
    # the originals mapped to new labels 0..4
    torch.manual_seed(0)
    perm = torch.randperm(100).numpy()
    originals = sorted(int(np.where(perm == new)[0][0]) for new in range(5))
    x = load_cifar(str(data_root), data.cifar.CIFAR100)
    expected = torch.cat([x["x_test"][x["y_test"] == c] for c in originals])
    assert sorted(map(bytes, val.tasks[0].test.x.numpy())) == sorted(map(bytes, expected.numpy()))
    # the shift is computed: 10 tasks of 10 classes with 2 validation tasks shift by 20
    assert cifar100_split(str(data_root), n_tasks=10, n_val_tasks=2, part="cl").n_global_classes == 80
    with pytest.raises(ConfigError, match="n_val_tasks"):
        cifar100_split(str(data_root), part="val")


def test_mixture5(tiny_mnist):
    s = mixture5(str(tiny_mnist), seed=0, verify_checksums=False)
    assert [t.name for t in s.tasks] == ["mnist", "cifar10", "notmnist", "svhn", "fashion_mnist"]
    assert s.input_shape == (3, 32, 32) and all(t.train.x.shape[1:] == (3, 32, 32) for t in s.tasks)
    assert s.tasks[0].classes == list(range(20, 30))  # MNIST is dataset id 2
    assert s.tasks[0].transform.mean == (0.1,) and s.tasks[3].transform.std == (0.198, 0.201, 0.197)
    t = s.tasks[4]  # 30 training images, 15 % validation (round(4.5) = 4)
    assert (len(t.train), len(t.valid)) == (26, 4)


def test_gray_to_rgb32_pads_and_replicates():
    x = torch.full((2, 1, 28, 28), 7, dtype=torch.uint8)
    out = gray_to_rgb32(x)
    assert out.shape == (2, 3, 32, 32) and out.is_contiguous()
    assert (out[:, :, 2:30, 2:30] == 7).all() and out[:, :, :2].sum() == 0 and out[:, :, :, 30:].sum() == 0
    assert torch.equal(out[:, 0], out[:, 2])


def test_svhn_labels_and_checksum(data_root):
    d = load_svhn(data_root, allow_download=False, verify_checksums=False)
    assert d["x_train"].shape == (30, 3, 32, 32) and sorted(d["y_train"].unique().tolist()) == list(range(10))
    with pytest.raises(DatasetError, match="md5"):
        load_svhn(data_root, allow_download=False, verify_checksums=True)


def test_notmnist_folder_skips_unreadable_and_reads_pickles(data_root, tmp_path):
    d = load_notmnist(data_root)
    assert len(d["y_train"]) + len(d["y_test"]) == 40  # the corrupt PNG is skipped
    assert d["x_train"].shape[1:] == (1, 28, 28)
    fixtures.write_notmnist_pickles(tmp_path)
    p = load_notmnist(tmp_path)
    assert p["x_train"].shape == (30, 1, 28, 28) and len(p["y_test"]) == 10


def test_missing_files_stop_with_one_line(tmp_path):
    for build, hint in ((lambda: cifar_alt(str(tmp_path), download=False), "cifar"),
                        (lambda: miniimagenet(str(tmp_path)), "MI_raw"),
                        (lambda: tinyimagenet(str(tmp_path)), "tiny-imagenet-200"),
                        (lambda: cub(str(tmp_path)), "CUB_200_2011"),
                        (lambda: load_notmnist(tmp_path), "notmnist")):
        with pytest.raises(DatasetError, match=hint) as e:
            build()
        assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


def test_corrupt_cifar_pickle(data_root, tmp_path):
    folder = tmp_path / "cifar" / CIFAR10.folder
    folder.mkdir(parents=True)
    for f in (data_root / "cifar" / CIFAR10.folder).iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((3, 100), np.uint8), "labels": [0, 1, 2]}, f)
    with pytest.raises(DatasetError, match="CIFAR structure"):
        load_cifar(tmp_path, CIFAR10, allow_download=False)


def test_cifar_tarball_is_checked_then_extracted(data_root, tmp_path, monkeypatch):
    archive = tmp_path / "cifar" / CIFAR10.archive
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(data_root / "cifar" / CIFAR10.folder, arcname=CIFAR10.folder)
    with pytest.raises(DatasetError, match="md5"):
        load_cifar(tmp_path, CIFAR10, allow_download=False)
    from data.download import md5_file
    monkeypatch.setattr(data.cifar, "CIFAR10", data.cifar.CifarVariant(
        **{**CIFAR10.__dict__, "md5": md5_file(archive)}))
    d = load_cifar(tmp_path, data.cifar.CIFAR10, allow_download=False)
    assert d["x_train"].shape == (20, 3, 32, 32)


def test_canonical_file_md5(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    assert canonical_file(f, "900150983cd24fb0d6963f7d28e17f72", [], False, True, "x") == f
    with pytest.raises(DatasetError, match="not the canonical"):
        canonical_file(f, "0" * 32, [], False, True, "x")


# --- GEM format ----------------------------------------------------------------------------------------------
def test_gem_file_read_infer_and_roundtrip(data_root, tmp_path):
    s = gem_file(str(data_root / "gem" / "cifar_tiny.pt"))
    assert s.input_shape == (3, 32, 32) and len(s) == 3 and s.tasks[1].classes == [2, 3]
    assert s.tasks[0].train.x.dtype == torch.uint8  # exact multiples of 1/255 are stored compactly
    out = write_gem_file(s, tmp_path / "copy.pt")
    tasks_tr, tasks_te = read_gem_file(out)
    assert tasks_tr[1][1].shape == (8, 3072) and set(tasks_tr[1][2].tolist()) == {2, 3}
    assert torch.equal(gem_file(str(out)).tasks[2].test.x, s.tasks[2].test.x)
    flat = fixtures.write_gem_file(tmp_path / "mnist.pt", row=784)
    assert gem_file(str(flat)).input_shape == (1, 28, 28)
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(DatasetError, match="GEM"):
        gem_file(str(tmp_path / "bad.pt"))


# --- large image sets: cache + streaming ---------------------------------------------------------------------
def test_miniimagenet_folder_split_and_cache(data_root):
    s = miniimagenet(str(data_root), seed=3)
    expected = np.split(np.random.RandomState(3).permutation(100), 20)
    assert [t.classes for t in s.tasks] == [g.tolist() for g in expected]
    t = s.tasks[0]
    assert isinstance(t.train.x, MemmapImages) and t.train.x.shape[1:] == (3, 84, 84)
    assert (len(t.train) + len(t.valid), len(t.test)) == (25, 5)  # 5 train / 1 test per class
    caches = sorted((data_root / "miniimagenet" / "cache").glob("*.npy"))
    assert len(caches) == 2 and not list((data_root / "miniimagenet" / "cache").glob("*.tmp*"))
    mtimes = [c.stat().st_mtime_ns for c in caches]
    bgr = miniimagenet(str(data_root), seed=3, bgr=True)
    assert [c.stat().st_mtime_ns for c in caches] == mtimes  # reused, and BGR gets its own cache
    rgb_pixels = t.test.x.read(np.arange(2))
    assert torch.equal(bgr.tasks[0].test.x.read(np.arange(2)), rgb_pixels.flip(1))


def test_miniimagenet_pickles_are_bgr(tmp_path):
    fixtures.write_miniimagenet_pickles(tmp_path, n_classes=10, side=84)
    with open(tmp_path / "miniimagenet" / "test.pkl", "rb") as f:
        first = pickle.load(f)["images"][0]
    s = miniimagenet(str(tmp_path), n_tasks=2, num_workers=0)
    task = next(t for t in s.tasks if 0 in t.classes)
    pixels = task.test.x.read(np.arange(len(task.test)))[task.test.y == task.classes.index(0)]
    assert torch.equal(pixels[0], torch.from_numpy(first[:, :, ::-1].transpose(2, 0, 1).copy()))


def test_tinyimagenet_one_class_list_per_task(data_root):
    s = tinyimagenet(str(data_root), seed=1)
    assert len(s) == 4 and all(len(t.classes) == 50 for t in s.tasks)
    assert s.tasks[0].classes == np.split(np.random.RandomState(1).permutation(200), 4)[0].tolist()
    for t in s.tasks:  # train and test draw from the same classes
        assert set(t.train.y.tolist() + t.valid.y.tolist()) == set(t.test.y.tolist()) == set(range(50))
    assert s.input_shape == (3, 64, 64)


def test_class_order_regroups_every_split_stream(data_root):
    """stream.class_order: tasks take consecutive groups of the given permutation; null keeps each stream's order."""
    order = list(range(199, -1, -1))
    s = tinyimagenet(str(data_root), class_order=order)
    assert [t.classes for t in s.tasks] == [order[i:i + 50] for i in range(0, 200, 50)]
    task = s.tasks[0]  # the images follow: local label k is class order[k]
    assert set(task.test.y.tolist()) == set(range(50)) and len(task.test) == 50
    cifar = cifar100_split(str(data_root), n_tasks=50, class_order=[*range(98, 100), *range(98)])
    assert cifar.tasks[0].classes == [98, 99] and cifar.tasks[1].classes == [0, 1]
    assert cub(str(data_root), image_size=32, class_order=order).tasks[0].classes == order[:10]
    assert miniimagenet(str(data_root), class_order=list(range(100))).tasks[19].classes == list(range(95, 100))
    with pytest.raises(ConfigError, match="permutation"):
        tinyimagenet(str(data_root), class_order=[0, 1, 2])
    with pytest.raises(ConfigError, match="part=all"):
        cifar100_split(str(data_root), n_val_tasks=3, part="cl", class_order=list(range(100)))


def test_cub_split(data_root):
    s = cub(str(data_root), image_size=32, shuffle_classes=False)
    assert len(s) == 20 and s.tasks[1].classes == list(range(10, 20)) and s.input_shape == (3, 32, 32)
    assert (len(s.tasks[0].train) + len(s.tasks[0].valid), len(s.tasks[0].test)) == (20, 10)
    assert any("cache" in str(p) for p in (data_root / "CUB_200_2011" / "cache").glob("*.npy"))
