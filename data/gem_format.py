"""The GEM / BCL benchmark file: `torch.save([tasks_tr, tasks_te])`, each a list of T entries [meta, X, Y] with X
float [N, D] in [0, 1] (or 4-D images [N, C, H, W]) and Y int64 GLOBAL labels. Users can bring the exact files of
the GEM and BCL papers (mnist_permutations.pt, cifar100.pt, cifar-cl.pt, cub-cl.pt, mini-cl.pt, ...):
`stream=gem_file stream.path=...`; `write_gem_file` exports any stream in the same format."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from cl.config.options import Int, ListOf, Text, options
from cl.errors import ConfigError, DatasetError
from data.image_cache import take_rows
from data.image_files import keep_first_tasks
from data.stream import STREAM_OPTIONS, InputTransform, Split, Stream, Task, split_valid

# flat row lengths of the GEM files and the image shape their rows are views of (channel-major, as GEM's raw.py)
FLAT_SHAPES = {784: (1, 28, 28), 3072: (3, 32, 32)}


def _compact(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats that are exact multiples of 1/255 (GEM's ÷255 of uint8 pixels) back to uint8: 4× less memory,
    same values after the InputTransform's ÷255."""
    if x.is_floating_point() and len(x):
        scaled = (x * 255).round()
        if (scaled - x * 255).abs().max() < 1e-3 and scaled.min() >= 0 and scaled.max() <= 255:
            return scaled.to(torch.uint8)
    return x


def _check_entry(entry, path: Path, where: str):
    if not (isinstance(entry, (list, tuple)) and len(entry) == 3 and isinstance(entry[1], torch.Tensor)
            and isinstance(entry[2], torch.Tensor) and len(entry[1]) == len(entry[2])):
        raise DatasetError(f"{path}: {where} is not [meta, X, Y] with X and Y tensors of equal length; "
                           f"expected the GEM format [tasks_tr, tasks_te]")


def read_gem_file(path: str | Path) -> tuple[list, list]:
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} not found; set stream.path to a GEM/BCL .pt file (e.g. the output of GEM's "
                           f"data/*.py or BCL's data/cifar100.py)")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)  # tensors, lists, str/float meta only
    except Exception as e:  # unpickling errors come in many types
        raise DatasetError(f"{path} could not be loaded as a GEM .pt file ({type(e).__name__}: {e})")
    if not (isinstance(content, (list, tuple)) and len(content) == 2 and len(content[0]) == len(content[1])):
        raise DatasetError(f"{path} is not [tasks_tr, tasks_te] with as many test as training tasks")
    for split, tasks in zip(("tasks_tr", "tasks_te"), content):
        for t, entry in enumerate(tasks):
            _check_entry(entry, path, f"{split}[{t}]")
    return list(content[0]), list(content[1])


def _input_shape(x: torch.Tensor, override: Sequence[int] | None) -> tuple[int, ...]:
    if override is not None:
        return tuple(override)
    if x.dim() == 4:
        return tuple(x.shape[1:])
    return FLAT_SHAPES.get(x.shape[1], (x.shape[1],))


def _meta_label(meta) -> str:
    """A short task name from GEM's meta: "random permutation", a rotation angle, a class range (c1, c2)."""
    if isinstance(meta, (list, tuple)):
        return "-".join(map(str, meta))
    return f"{meta:g}" if isinstance(meta, float) else str(meta)


@options(**STREAM_OPTIONS, path=Text(), input_shape=ListOf(Int(ge=1), min_len=1, optional=True))
def gem_file(path: str, name: str = "gem_file", seed: int = 0, pc_valid: float = 0.1,
             input_shape: Sequence[int] | None = None, max_tasks: int | None = None) -> Stream:
    """A stream from a GEM-format file. Each task's classes are the global labels present in its data (sorted;
    local label = position). Flat rows of 784 / 3072 values become 1×28×28 / 3×32×32 images (`input_shape`
    overrides). GEM/BCL feed the raw [0, 1] values, so no normalization is applied."""
    tasks_tr, tasks_te = read_gem_file(path)
    shape = _input_shape(tasks_tr[0][1], input_shape)
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for t, ((meta, x_tr, y_tr), (_, x_te, y_te)) in enumerate(zip(tasks_tr, tasks_te)):
        classes = torch.cat([y_tr, y_te]).long().unique()  # sorted
        try:
            x_tr, x_te = (_compact(x.reshape(len(x), *shape)) for x in (x_tr, x_te))
        except RuntimeError:
            raise ConfigError(f"task {t} of {path} has rows of {x_tr[0].numel()} values, which do not fit "
                              f"stream.input_shape={list(shape)}")
        train = Split(x_tr, torch.searchsorted(classes, y_tr.long()))
        train, valid = split_valid(train, pc_valid, False, g)
        test = Split(x_te, torch.searchsorted(classes, y_te.long()))
        tasks.append(Task(name=f"{t}:{_meta_label(meta)}", classes=classes.tolist(), train=train, valid=valid,
                          test=test, transform=InputTransform()))
    return keep_first_tasks(Stream(name, tasks, shape), max_tasks)


def write_gem_file(stream: Stream, path: str | Path, flat: bool = True) -> Path:
    """Write `stream` as a GEM file: X float in [0, 1] (train = train + valid), Y global labels, meta = the
    task name. `flat` stores rows [N, D] as GEM does; otherwise images [N, C, H, W] (BCL's mini/CUB files).
    Only the pixels are stored: a stream's normalization and permutations are not applied."""
    def as_gem(splits: Sequence[Split], task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([take_rows(s.x, torch.arange(len(s.x))) for s in splits])
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        y = torch.as_tensor(task.classes, dtype=torch.long)[torch.cat([s.y for s in splits])]
        return (x.flatten(1) if flat else x), y

    tasks_tr = [[t.name, *as_gem([t.train, t.valid], t)] for t in stream.tasks]
    tasks_te = [[t.name, *as_gem([t.test], t)] for t in stream.tasks]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save([tasks_tr, tasks_te], tmp)
    tmp.replace(path)
    return path
