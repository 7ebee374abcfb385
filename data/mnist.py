"""MNIST from its canonical idx files (`.gz` or raw) under `<data_dir>/mnist/`, verified by header and by the md5
of the decompressed content; downloaded from the standard mirrors when missing and the machine is online."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from cl.errors import DatasetError
from data.download import download, md5

MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/",
           "http://yann.lecun.com/exdb/mnist/")
# md5 of the decompressed idx content, and the expected shape
FILES = {
    "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", (60000, 28, 28)),
    "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", (60000,)),
    "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", (10000,)),
}
MEAN, STD = 0.1307, 0.3081


def parse_idx(raw: bytes, name: str) -> np.ndarray:
    """Parse an idx file: magic (0, 0, dtype 0x08 = uint8, ndim), big-endian dims, then the data."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{name} is not an idx file of uint8 (bad magic); delete it and provide the canonical file")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise DatasetError(f"{name} is truncated or corrupt ({len(raw) - offset} bytes of data for shape {dims}); "
                           f"delete it and provide the canonical file")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _read_into_buffer(path: Path, size: int) -> bytearray:
    """The (decompressed) file content in one writable buffer of the expected size plus one byte (to notice a
    longer file), so the images exist once in memory and become a tensor without a copy."""
    buf = bytearray(size + 1)
    n = 0
    try:
        with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as f, memoryview(buf) as view:
            while n < len(buf) and (got := f.readinto(view[n:])):
                n += got
    except (OSError, EOFError) as e:
        what = "is not a valid gzip file" if path.suffix == ".gz" else "cannot be read"
        raise DatasetError(f"{path} {what} ({e}); delete it and provide the canonical file")
    del buf[n:]
    return buf


def _read(folder: Path, stem: str, allow_download: bool) -> np.ndarray:
    expected_md5, shape = FILES[stem]
    size = 4 + 4 * len(shape) + int(np.prod(shape))  # idx header + uint8 data
    raw_path, gz_path = folder / stem, folder / f"{stem}.gz"
    if not raw_path.exists() and not gz_path.exists() and allow_download:
        try:
            download([m + f"{stem}.gz" for m in MIRRORS], gz_path)
        except DatasetError:
            pass  # reported below with the path and what to do
    path = raw_path if raw_path.exists() else gz_path
    if not path.exists():
        raise DatasetError(missing_message(folder, allow_download))
    raw = _read_into_buffer(path, size)
    array = parse_idx(raw, str(path))
    if array.shape != shape or md5(raw) != expected_md5:
        raise DatasetError(f"{path} does not match the canonical MNIST file (shape {array.shape}, md5 {md5(raw)}); "
                           f"delete it and provide the canonical file")
    return array


def missing_message(folder: Path, tried_download: bool) -> str:
    """What to do when MNIST is not in `folder` (<data root>/mnist), also on a machine that cannot download it."""
    missing = [f"{stem}(.gz)" for stem in FILES
               if not (folder / stem).exists() and not (folder / f"{stem}.gz").exists()]
    why = ("downloading them failed (no network?)" if tried_download
           else "downloading is off (stream.download=false)")
    lacks = "holds none of the four files" if len(missing) == len(FILES) else f"lacks {', '.join(missing)}"
    return (f"MNIST not found: {folder} {lacks}; {why}. Offline, copy the four canonical files "
            f"{', '.join(f'{stem}.gz' for stem in FILES)} (gzipped or not) into <data root>/mnist/ and give the data "
            f"root as CL_DATA_DIR=<data root> or paths.data_dir=<data root> (now {folder.parent})")


def load_mnist(data_dir: str | Path, allow_download: bool = True) -> dict[str, torch.Tensor]:
    """{'x_train': uint8 [60000, 1, 28, 28], 'y_train': int64, 'x_test', 'y_test'}."""
    folder = Path(data_dir) / "mnist"
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = _read(folder, f"{prefix}-images-idx3-ubyte", allow_download)
        y = _read(folder, f"{prefix}-labels-idx1-ubyte", allow_download)
        out[f"x_{split}"] = torch.from_numpy(x).unsqueeze(1)  # shares the decompressed buffer
        out[f"y_{split}"] = torch.from_numpy(y.astype(np.int64))
    return out
