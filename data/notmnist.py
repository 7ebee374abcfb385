"""notMNIST (letters A-J), user-provided under `<data_dir>/notmnist/`, in either form:

- `notmnist_train.pkl` / `notmnist_test.pkl`: the pickles of nkundiushuti/notmnist_convert that HAT and BLIP use
  (dicts with 'features' uint8 [N, 1, H, W] and 'labels'), or
- `notMNIST_small/A ... J/*.png`: Yaroslav Bulatov's original folders; a few files in the published archive are
  unreadable and are skipped. Train/test are split per class with a fixed seed (0), `test_fraction` of each class.

No checksums are published for either form, so the files are checked by structure only."""
from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from cl.errors import DatasetError

log = logging.getLogger(__name__)
LETTERS = "ABCDEFGHIJ"
WHERE = ("put notmnist_train.pkl/notmnist_test.pkl (https://github.com/nkundiushuti/notmnist_convert) or the "
         "notMNIST_small folder (http://yaroslavvb.blogspot.com/2011/09/notmnist-dataset.html) there")


def _read_pickle(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        x, y = np.asarray(d["features"], dtype=np.uint8), np.asarray(d["labels"], dtype=np.int64).reshape(-1)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{path} is not a notMNIST pickle ({type(e).__name__}: {e}); {WHERE}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1 or len(x) != len(y) or y.min() < 0 or y.max() > 9:
        raise DatasetError(f"{path} does not have the notMNIST structure (features {x.shape}); {WHERE}")
    return torch.from_numpy(x.copy()), torch.from_numpy(y)


def _read_folder(folder: Path, test_fraction: float) -> dict[str, torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    images, labels, skipped = [], [], 0
    for label, letter in enumerate(LETTERS):
        for path in sorted((folder / letter).glob("*.png")):
            try:
                with Image.open(path) as img:
                    images.append(np.asarray(img.convert("L"), dtype=np.uint8))
                labels.append(label)
            except (OSError, UnidentifiedImageError):
                skipped += 1  # the published archive has a few truncated PNGs
    if skipped:
        log.info("notMNIST: skipped %d unreadable files in %s", skipped, folder)
    if not images or len(set(labels)) != 10 or len({im.shape for im in images}) != 1:
        raise DatasetError(f"{folder} must hold readable same-size PNGs in each of the folders A..J; {WHERE}")
    x, y = torch.from_numpy(np.stack(images)).unsqueeze(1), torch.tensor(labels)
    is_test = torch.zeros(len(y), dtype=torch.bool)
    g = torch.Generator().manual_seed(0)  # fixed: every run is tested on the same images
    for c in range(10):
        members = (y == c).nonzero().flatten()
        n_test = max(1, int(round(test_fraction * len(members))))
        is_test[members[torch.randperm(len(members), generator=g)[:n_test]]] = True
    return {"x_train": x[~is_test], "y_train": y[~is_test], "x_test": x[is_test], "y_test": y[is_test]}


def load_notmnist(data_dir: str | Path, test_fraction: float = 0.15) -> dict[str, torch.Tensor]:
    """{'x_train': uint8 [N, 1, H, W], 'y_train': int64 (A=0 ... J=9), 'x_test', 'y_test'}."""
    folder = Path(data_dir) / "notmnist"
    if (folder / "notmnist_train.pkl").exists():
        out = {}
        for split in ("train", "test"):
            out[f"x_{split}"], out[f"y_{split}"] = _read_pickle(folder / f"notmnist_{split}.pkl")
        return out
    if (folder / "notMNIST_small").is_dir():
        return _read_folder(folder / "notMNIST_small", test_fraction)
    raise DatasetError(f"notMNIST not found in {folder}; {WHERE} (set paths.data_dir or CL_DATA_DIR to the data root)")
