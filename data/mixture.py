"""BLIP/HAT's "mixture of 5 datasets": CIFAR-10, notMNIST, MNIST, SVHN, Fashion-MNIST, all 10-way at 3×32×32
(grayscale padded to 32 and replicated to 3 channels), each with its own normalization, in the seeded order of
the official code."""
from __future__ import annotations

from typing import Callable

import torch

from data import cifar, fashion, mnist, notmnist, svhn
from cl.config.options import Bool, Float, options
from data.image_files import gray_to_rgb32, keep_first_tasks, shuffled_order
from data.stream import STREAM_OPTIONS, InputTransform, Split, Stream, Task, split_valid

# (name, normalization mean, std) in the official dataset-id order 0..4; the grayscale statistics include the
# 2-pixel padding, as in the official code
DATASETS = (
    ("cifar10", cifar.MEAN, cifar.STD),
    ("notmnist", (0.4254,), (0.4501,)),
    ("mnist", (0.1,), (0.2752,)),
    ("svhn", svhn.MEAN, svhn.STD),
    ("fashion_mnist", (0.2190,), (0.3318,)),
)


def _loaders(data_dir: str, download: bool, verify: bool, notmnist_test_fraction: float) -> dict[str, Callable]:
    return {
        "cifar10": lambda: cifar.load_cifar(data_dir, cifar.CIFAR10, download, verify),
        "notmnist": lambda: notmnist.load_notmnist(data_dir, notmnist_test_fraction),
        "mnist": lambda: mnist.load_mnist(data_dir, download),
        "svhn": lambda: svhn.load_svhn(data_dir, download, verify),
        "fashion_mnist": lambda: fashion.load_fashion_mnist(data_dir, download, verify),
    }


@options(**STREAM_OPTIONS, fixed_order=Bool(), notmnist_test_fraction=Float(gt=0, lt=1))
def mixture5(data_dir: str, name: str = "mixture5", seed: int = 0, fixed_order: bool = False,
             pc_valid: float = 0.15, download: bool = True, verify_checksums: bool = True,
             notmnist_test_fraction: float = 0.15, max_tasks: int | None = None) -> Stream:
    """Five 10-way tasks in the order `shuffle(arange(5), random_state=seed)` (seed 0: MNIST, CIFAR-10, notMNIST,
    SVHN, Fashion-MNIST) unless `fixed_order`. Global class ids: dataset id × 10 + label, so a shared head
    keeps the datasets apart."""
    order = list(range(5)) if fixed_order else shuffled_order(5, seed)
    loaders = _loaders(data_dir, download, verify_checksums, notmnist_test_fraction)
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for dataset_id in order[:max_tasks]:
        dataset, mean, std = DATASETS[dataset_id]
        data = loaders[dataset]()
        x = {s: data[f"x_{s}"] if data[f"x_{s}"].shape[1] == 3 else gray_to_rgb32(data[f"x_{s}"])
             for s in ("train", "test")}
        train, valid = split_valid(Split(x["train"], data["y_train"]), pc_valid, False, g)
        tasks.append(Task(name=dataset, classes=[dataset_id * 10 + c for c in range(10)], train=train, valid=valid,
                          test=Split(x["test"], data["y_test"]), transform=InputTransform(mean, std)))
    return keep_first_tasks(Stream(name, tasks, (3, 32, 32)), max_tasks)
