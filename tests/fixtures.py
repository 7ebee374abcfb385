"""Tiny datasets written in each dataset's native file format (a few images per class), so that every loader's
real parsing code runs in the tests.

    python -m tests.fixtures DIR      # writes all of them under DIR (MNIST: linked from the shared data if present)
    CL_DATA_DIR=DIR python train.py stream=cifar_alt model=alexnet debug=default
"""
from __future__ import annotations

import gzip
import hashlib
import pickle
import sys
from pathlib import Path

import numpy as np
import torch

RNG_SEED = 0


def _images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(n, *shape), dtype=np.uint8)


def _labels(n_classes: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(n_classes), per_class)


def _save_image(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


# --- CIFAR: python pickles ------------------------------------------------------------------------------------
def write_cifar10(root: Path, train_per_class: int = 2, test_per_class: int = 1) -> Path:
    folder = Path(root) / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    y = _labels(10, train_per_class)
    x = _images(len(y), (3072,), 1)
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": x[part], "labels": y[part].tolist(), "batch_label": f"training batch {i} of 5"}, f)
    y = _labels(10, test_per_class)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": _images(len(y), (3072,), 2), "labels": y.tolist()}, f)
    return folder


def write_cifar100(root: Path, train_per_class: int = 2, test_per_class: int = 1) -> Path:
    folder = Path(root) / "cifar" / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class, seed in (("train", train_per_class, 3), ("test", test_per_class, 4)):
        y = _labels(100, per_class)
        with open(folder / split, "wb") as f:
            pickle.dump({"data": _images(len(y), (3072,), seed), "fine_labels": y.tolist(),
                         "coarse_labels": (y // 5).tolist()}, f)
    return folder


# --- SVHN: MATLAB v5 .mat -----------------------------------------------------------------------------------
def write_svhn(root: Path, train_per_class: int = 3, test_per_class: int = 1) -> Path:
    from scipy.io import savemat

    folder = Path(root) / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class, seed in (("train", train_per_class, 5), ("test", test_per_class, 6)):
        digits = _labels(10, per_class)
        x = _images(len(digits), (32, 32, 3), seed).transpose(1, 2, 3, 0)  # [32, 32, 3, N] as the real files
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": np.where(digits == 0, 10, digits)[:, None]})
    return folder


# --- idx (MNIST, Fashion-MNIST) -----------------------------------------------------------------------------
def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write_idx_set(folder: Path, train_per_class: int, test_per_class: int, seed: int) -> dict[str, tuple]:
    """The four idx .gz files; returns {stem: (md5 of the decompressed content, shape)} as data.mnist.FILES."""
    folder.mkdir(parents=True, exist_ok=True)
    table = {}
    for prefix, per_class, s in (("train", train_per_class, seed), ("t10k", test_per_class, seed + 1)):
        y = _labels(10, per_class)
        for kind, array in (("images-idx3", _images(len(y), (28, 28), s)), ("labels-idx1", y)):
            stem = f"{prefix}-{kind}-ubyte"
            raw = _idx(array)
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
            table[stem] = (hashlib.md5(raw).hexdigest(), array.shape)
    return table


def write_fashion_mnist(root: Path, train_per_class: int = 3, test_per_class: int = 1) -> Path:
    folder = Path(root) / "fashion_mnist"
    _write_idx_set(folder, train_per_class, test_per_class, 7)
    return folder


def write_mnist(root: Path, train_per_class: int = 3, test_per_class: int = 1) -> dict[str, tuple]:
    """Tiny MNIST idx files; data.mnist checks the canonical md5s, so tests patch data.mnist.FILES with the
    returned table."""
    return _write_idx_set(Path(root) / "mnist", train_per_class, test_per_class, 9)


# --- notMNIST: letter folders of PNGs, or HAT's pickles -----------------------------------------------------
def write_notmnist_folder(root: Path, per_class: int = 4) -> Path:
    folder = Path(root) / "notmnist" / "notMNIST_small"
    for c, letter in enumerate("ABCDEFGHIJ"):
        for i, pixels in enumerate(_images(per_class, (28, 28), 10 + c)):
            _save_image(folder / letter / f"{letter}{i}.png", pixels)
    (folder / "A" / "corrupt.png").write_bytes(b"\x89PNG truncated")  # the real archive has such files
    return folder


def write_notmnist_pickles(root: Path, train_per_class: int = 3, test_per_class: int = 1) -> Path:
    folder = Path(root) / "notmnist"
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class, seed in (("train", train_per_class, 20), ("test", test_per_class, 21)):
        y = _labels(10, per_class)
        with open(folder / f"notmnist_{split}.pkl", "wb") as f:
            pickle.dump({"features": _images(len(y), (1, 28, 28), seed), "labels": y}, f)
    return folder


# --- large image sets: folder layouts -----------------------------------------------------------------------
def write_miniimagenet_folder(root: Path, n_classes: int = 100, per_class: int = 6, side: int = 12) -> Path:
    folder = Path(root) / "miniimagenet" / "MI_raw"
    for c in range(n_classes):
        for i, pixels in enumerate(_images(per_class, (side, side, 3), 100 + c)):
            _save_image(folder / f"n{c:08d}" / f"n{c:08d}_{i:04d}.jpg", pixels)
    return folder


def write_miniimagenet_pickles(root: Path, n_classes: int = 100, train_per_class: int = 5,
                               test_per_class: int = 1, side: int = 84) -> Path:
    """train.pkl / test.pkl as BLIP's split script writes them: lists of [H, W, 3] BGR arrays and int labels."""
    folder = Path(root) / "miniimagenet"
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class, seed in (("train", train_per_class, 30), ("test", test_per_class, 31)):
        y = _labels(n_classes, per_class)
        with open(folder / f"{split}.pkl", "wb") as f:
            pickle.dump({"images": list(_images(len(y), (side, side, 3), seed)), "labels": y.tolist()}, f)
    return folder


def write_tinyimagenet(root: Path, n_classes: int = 200, train_per_class: int = 2, val_per_class: int = 1,
                       side: int = 8) -> Path:
    folder = Path(root) / "tiny-imagenet-200"
    wnids = [f"n{c:08d}" for c in range(n_classes)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # the loader must not rely on file order
    annotations = []
    for c, wnid in enumerate(wnids):
        for i, pixels in enumerate(_images(train_per_class, (side, side, 3), 200 + c)):
            _save_image(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", pixels)
        for i, pixels in enumerate(_images(val_per_class, (side, side, 3), 600 + c)):
            name = f"val_{c * val_per_class + i}.JPEG"
            _save_image(folder / "val" / "images" / name, pixels)
            annotations.append(f"{name}\t{wnid}\t0\t0\t{side - 1}\t{side - 1}")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return folder


def write_cub(root: Path, n_classes: int = 200, train_per_class: int = 2, test_per_class: int = 1,
              side: int = 10) -> Path:
    folder = Path(root) / "CUB_200_2011"
    images, labels, split = [], [], []
    image_id = 0
    for c in range(1, n_classes + 1):
        for i, pixels in enumerate(_images(train_per_class + test_per_class, (side, side + 3, 3), 1000 + c)):
            image_id += 1
            relative = f"{c:03d}.Bird_{c}/Bird_{c}_{i}.jpg"
            _save_image(folder / "images" / relative, pixels)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {int(i < train_per_class)}")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels), ("train_test_split.txt", split)):
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


# --- GEM / BCL benchmark file -------------------------------------------------------------------------------
def write_gem_file(path: Path, n_tasks: int = 3, classes_per_task: int = 2, train_per_class: int = 4,
                   test_per_class: int = 2, row: int | tuple[int, ...] = 3072) -> Path:
    """[tasks_tr, tasks_te] with X float [N, row] in [0, 1] (multiples of 1/255) and Y int64 global labels; a tuple
    `row` gives image tensors of that shape (BCL's miniImageNet/CUB files: [N, 3, 84, 84] / [N, 3, 224, 224])."""
    tasks = {"train": [], "test": []}
    for t in range(n_tasks):
        classes = list(range(t * classes_per_task, (t + 1) * classes_per_task))
        for split, per_class in (("train", train_per_class), ("test", test_per_class)):
            y = torch.tensor(classes).repeat_interleave(per_class)
            x = torch.from_numpy(_images(len(y), row if isinstance(row, tuple) else (row,), 40 + t)).float() / 255
            tasks[split].append([(classes[0], classes[-1] + 1), x, y])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save([tasks["train"], tasks["test"]], path)
    return path


# --- ImageNet AlexNet weights: a state dict in torchvision's key layout ------------------------------------------
def torchvision_alexnet_shapes(fc_sizes: tuple[int, int] = (4096, 4096)) -> dict[str, tuple[int, ...]]:
    """The parameter names and shapes of `torchvision.models.alexnet()` (fc_sizes shrink classifier.1/.4 for tests)."""
    fc1, fc2 = fc_sizes
    layers = {"features.0": (64, 3, 11, 11), "features.3": (192, 64, 5, 5), "features.6": (384, 192, 3, 3),
              "features.8": (256, 384, 3, 3), "features.10": (256, 256, 3, 3), "classifier.1": (fc1, 256 * 6 * 6),
              "classifier.4": (fc2, fc1), "classifier.6": (1000, fc2)}
    return {f"{layer}.{kind}": shape if kind == "weight" else shape[:1]
            for layer, shape in layers.items() for kind in ("weight", "bias")}


def write_torchvision_alexnet(path: Path, fc_sizes: tuple[int, int] = (4096, 4096)) -> Path:
    """Random tensors under torchvision's AlexNet names and shapes, saved as its pretrained files are (a state dict)."""
    g = torch.Generator().manual_seed(RNG_SEED)
    shapes = torchvision_alexnet_shapes(fc_sizes)
    state = {name: 0.01 * torch.randn(shape, generator=g) for name, shape in shapes.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


# --- ImageNet ResNet-18 weights: a state dict in torchvision's key layout ----------------------------------------
def torchvision_resnet18_shapes() -> dict[str, tuple[int, ...]]:
    """The state-dict names and shapes of `torchvision.models.resnet18()` (BatchNorm buffers included)."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix: str, n: int):
        shapes.update({f"{prefix}.weight": (n,), f"{prefix}.bias": (n,), f"{prefix}.running_mean": (n,),
                       f"{prefix}.running_var": (n,), f"{prefix}.num_batches_tracked": ()})

    bn("bn1", 64)
    widths = (64, 64, 128, 256, 512)
    for layer in range(1, 5):
        c_in, c_out = widths[layer - 1], widths[layer]
        for block in range(2):
            prefix = f"layer{layer}.{block}"
            shapes[f"{prefix}.conv1.weight"] = (c_out, c_in if block == 0 else c_out, 3, 3)
            bn(f"{prefix}.bn1", c_out)
            shapes[f"{prefix}.conv2.weight"] = (c_out, c_out, 3, 3)
            bn(f"{prefix}.bn2", c_out)
            if block == 0 and layer > 1:
                shapes[f"{prefix}.downsample.0.weight"] = (c_out, c_in, 1, 1)
                bn(f"{prefix}.downsample.1", c_out)
    shapes.update({"fc.weight": (1000, 512), "fc.bias": (1000,)})
    return shapes


def write_torchvision_resnet18(path: Path) -> Path:
    """Random tensors under torchvision's ResNet-18 names and shapes, saved as its pretrained file is."""
    g = torch.Generator().manual_seed(RNG_SEED)
    state = {name: (torch.tensor(0) if name.endswith("num_batches_tracked") else
                    0.01 * torch.randn(shape, generator=g) + (1.0 if name.endswith("running_var") else 0.0))
             for name, shape in torchvision_resnet18_shapes().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def write_all(root: Path, mnist_source: Path | None = None) -> dict[str, tuple]:
    """Every fixture under `root`; returns the tiny MNIST checksum table (or {} when MNIST is linked from
    `mnist_source`, a folder holding the real files)."""
    root = Path(root)
    write_cifar10(root)
    write_cifar100(root)
    write_svhn(root)
    write_fashion_mnist(root)
    write_notmnist_folder(root)
    write_miniimagenet_folder(root)
    write_tinyimagenet(root)
    write_cub(root)
    write_gem_file(root / "gem" / "cifar_tiny.pt")
    write_gem_file(root / "mini-cl.pt", classes_per_task=5, train_per_class=2, test_per_class=1, row=(3, 84, 84))
    # BCL's CUB file holds 224×224 images; 64×64 keeps the fixture light (the recipe resizes nothing)
    write_gem_file(root / "cub-cl.pt", classes_per_task=5, train_per_class=2, test_per_class=1, row=(3, 64, 64))
    if mnist_source is not None and (mnist_source / "mnist").is_dir():
        (root / "mnist").symlink_to((mnist_source / "mnist").resolve())
        return {}
    return write_mnist(root)


if __name__ == "__main__":
    target = Path(sys.argv[1])
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    write_all(target, shared)
    print(f"fixtures written to {target}; run e.g. CL_DATA_DIR={target} python train.py stream=cifar_alt "
          f"model=alexnet debug=default stream.verify_checksums=false")
