"""SVHN (cropped digits) from the canonical `train_32x32.mat` / `test_32x32.mat` (MATLAB v5, read with
scipy.io.loadmat) under `<data_dir>/svhn/`, md5-checked, downloaded when missing and online."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cl.errors import DatasetError
from data.image_files import canonical_file

URL = "http://ufldl.stanford.edu/housenumbers/"
MD5 = {"train": "e26dedcc434d2e4c54c9b2d4a06d8373", "test": "eb5a983be6a315427106f1b164d9cef3"}
MEAN, STD = (0.4377, 0.4438, 0.4728), (0.198, 0.201, 0.197)
WHERE = f"download train_32x32.mat and test_32x32.mat from {URL} into that folder, or run once online"


def _read_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
        x, y = mat["X"], mat["y"].reshape(-1).astype(np.int64)
    except (ValueError, KeyError, OSError, TypeError) as e:
        raise DatasetError(f"{path} is not an SVHN .mat file ({type(e).__name__}: {e}); delete it and {WHERE}")
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y) or y.min() < 1 or y.max() > 10:
        raise DatasetError(f"{path} does not have the SVHN structure (X {x.shape}, labels in [{y.min()}, {y.max()}]);"
                           f" delete it and {WHERE}")
    y[y == 10] = 0  # SVHN stores digit 0 as label 10
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8)), torch.from_numpy(y)


def load_svhn(data_dir: str | Path, allow_download: bool = True, verify_checksums: bool = True):
    """{'x_train': uint8 [73257, 3, 32, 32], 'y_train': int64 digits 0-9, 'x_test', 'y_test'}."""
    folder = Path(data_dir) / "svhn"
    out = {}
    for split in ("train", "test"):
        path = canonical_file(folder / f"{split}_32x32.mat", MD5[split], [URL + f"{split}_32x32.mat"],
                              allow_download, verify_checksums, WHERE)
        out[f"x_{split}"], out[f"y_{split}"] = _read_mat(path)
    return out
