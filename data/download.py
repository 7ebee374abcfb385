"""Fetch dataset files from their canonical mirrors with checksum verification (for users' machines; CI is offline)."""
from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Sequence

from cl.errors import DatasetError


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(urls: Sequence[str], dest: Path, timeout: float = 30.0) -> Path:
    """Try each mirror in turn; write atomically. Raises DatasetError naming every mirror tried; then the folders
    it created for `dest` are removed again (a mistyped data root is not left behind)."""
    dest = Path(dest)
    created = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        part = None
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, tempfile.NamedTemporaryFile(
                    dir=dest.parent, delete=False, suffix=".part") as tmp:
                part = Path(tmp.name)
                shutil.copyfileobj(r, tmp)
            part.replace(dest)
            return dest
        except Exception as e:  # offline, 404, timeout: try the next mirror
            errors.append(f"{url}: {e}")
            if part is not None:
                part.unlink(missing_ok=True)
    for folder in created:  # deepest first; only the empty ones this call made
        try:
            folder.rmdir()
        except OSError:
            break
    raise DatasetError(f"could not download {dest.name} ({'; '.join(errors)})")
