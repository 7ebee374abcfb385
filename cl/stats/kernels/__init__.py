"""Small C kernels for the hot loops that torch's ops would take several passes over memory for, compiled at first
use with the system C compiler (`$CC`, else `cc`) and cached in `$CL_KERNEL_CACHE` (default
~/.cache/cl-pipeline/kernels), one build per source, compiler and torch version (about 0.1 s).

Their loops are OpenMP loops linked against the OpenMP runtime torch itself runs (the libgomp that torch loaded), so
they use torch's own threads: torch.set_num_threads holds, and no second thread pool competes with torch's for the
cores. Where that cannot be had (not Linux, torch on another threading runtime, no compiler, a failed build, an
unwritable cache) `load` returns None, says why once in the log, and the caller runs its torch-ops path, which
computes the same thing.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCES = Path(__file__).resolve().parent
_loaded: dict[str, ctypes.CDLL | None] = {}


def cache_dir() -> Path:
    return Path(os.environ.get("CL_KERNEL_CACHE") or Path.home() / ".cache" / "cl-pipeline" / "kernels")


def load(name: str) -> ctypes.CDLL | None:
    """The library built from `<name>.c` of this folder, None where it cannot be built or used (see the module)."""
    if name not in _loaded:
        try:
            _loaded[name] = _build_and_load(SOURCES / f"{name}.c")
        except KernelUnavailable as why:
            log.info("%s.c not used, torch ops instead: %s", name, why)
            _loaded[name] = None
    return _loaded[name]


class KernelUnavailable(Exception):
    pass


def torch_openmp_runtime() -> Path:
    """The libgomp file torch runs its parallel regions on, read from this process's memory map: the one loaded under
    the runtime's own name, libgomp.so.1 (packages that vendor a private copy, as scikit-learn does, load it under a
    hashed name as a separate runtime that the kernels do not link)."""
    if not sys.platform.startswith("linux"):
        raise KernelUnavailable(f"built only on Linux (this is {sys.platform})")
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        raise KernelUnavailable("torch's parallel backend is not OpenMP")
    runtimes = [path for path in _loaded_libgomp() if path.name == "libgomp.so.1"]
    if len(runtimes) != 1:
        raise KernelUnavailable(f"expected torch's libgomp.so.1 in the process, found {len(runtimes)}")
    return runtimes[0]


def _loaded_libgomp() -> set[Path]:
    with open("/proc/self/maps") as maps:
        paths = {line.split(maxsplit=5)[-1].strip() for line in maps if "libgomp" in line}
    return {Path(p) for p in paths if Path(p).name.startswith("libgomp")}


def c_compiler() -> str:
    """The path of the C compiler the kernels are built with: `$CC`, else `cc`."""
    compiler = os.environ.get("CC") or "cc"
    path = shutil.which(compiler)
    if path is None:
        raise KernelUnavailable(f"no C compiler {compiler!r} on PATH (set CC to one)")
    return path


def _build_and_load(source: Path) -> ctypes.CDLL:
    runtime = torch_openmp_runtime()
    compiler_path = c_compiler()
    flags = ["-O3", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
    key = hashlib.sha256("\n".join([source.read_text(), compiler_path, str(runtime), torch.__version__, *flags])
                         .encode()).hexdigest()[:16]
    library = cache_dir() / f"{source.stem}-{key}.so"
    if not library.exists():
        partial = library.with_name(f"{library.name}.{os.getpid()}.part")  # concurrent builds each write their own
        try:
            library.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([compiler_path, *flags, str(source), "-o", str(partial), f"-L{runtime.parent}",
                            f"-l:{runtime.name}", f"-Wl,-rpath,{runtime.parent}"],
                           check=True, capture_output=True, text=True, timeout=120)
            os.replace(partial, library)
        except (OSError, subprocess.SubprocessError) as error:
            lines = str(getattr(error, "stderr", None) or error).strip().splitlines()
            raise KernelUnavailable(f"building {library} failed: {lines[-1] if lines else error!r}") from None
        finally:
            partial.unlink(missing_ok=True)
    runtimes_before = _loaded_libgomp()
    try:
        handle = ctypes.CDLL(str(library))
    except OSError as error:
        raise KernelUnavailable(f"loading {library} failed: {error}") from None
    if _loaded_libgomp() != runtimes_before:  # it must have joined torch's runtime, not brought its own
        raise KernelUnavailable(f"{library.name} loaded a second OpenMP runtime")
    return handle
