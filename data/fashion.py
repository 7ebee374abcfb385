"""Fashion-MNIST from its canonical idx `.gz` files under `<data_dir>/fashion_mnist/`, md5-checked (the md5s of the
.gz files published with the dataset and used by torchvision), downloaded when missing and online."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from cl.errors import DatasetError
from data.image_files import canonical_file
from data.mnist import parse_idx

MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
           "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
WHERE = ("download the four idx .gz files from https://github.com/zalandoresearch/fashion-mnist into that folder, "
         "or run once online")


def _read(folder: Path, name: str, allow_download: bool, verify: bool) -> np.ndarray:
    path = canonical_file(folder / name, MD5[name], [m + name for m in MIRRORS], allow_download, verify, WHERE)
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path} is not a valid gzip file ({e}); delete it and {WHERE}")
    return parse_idx(raw, str(path))


def load_fashion_mnist(data_dir: str | Path, allow_download: bool = True, verify_checksums: bool = True):
    """{'x_train': uint8 [60000, 1, 28, 28], 'y_train': int64, 'x_test', 'y_test'}."""
    folder = Path(data_dir) / "fashion_mnist"
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = _read(folder, f"{prefix}-images-idx3-ubyte.gz", allow_download, verify_checksums)
        y = _read(folder, f"{prefix}-labels-idx1-ubyte.gz", allow_download, verify_checksums)
        if x.ndim != 3 or len(x) != len(y) or y.max() > 9:
            raise DatasetError(f"Fashion-MNIST {split} files in {folder} do not match (images {x.shape}, "
                               f"{len(y)} labels); delete them and {WHERE}")
        out[f"x_{split}"] = torch.from_numpy(x.copy()).unsqueeze(1)
        out[f"y_{split}"] = torch.from_numpy(y.astype(np.int64))
    return out
