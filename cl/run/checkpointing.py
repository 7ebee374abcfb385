"""Interrupt-safe runs: SIGINT/SIGTERM stop training at the next batch boundary with a mid-task checkpoint, periodic
mid-task checkpoints survive SIGKILL, and `resume=true` continues from the newest checkpoint exactly.

Files in `<run dir>/checkpoints/`:
- `task_<t>.ckpt`: written after task t's training, task-end work and evaluation (its row is in results.json);
- `mid_task.ckpt`: written at a batch boundary inside a task, on SIGINT/SIGTERM or every
  `checkpoint_every_n_steps` optimizer steps; removed once that task's own checkpoint exists.

A mid-task checkpoint is a Lightning checkpoint (model, optimizer, loops, callback states such as the patience
schedule) plus `cl_resume`: where in the epoch training stopped, the RNG states, the partial epoch loss, the task's
training time so far and how far the loggers had written, so a resumed run replays nothing and logs nothing twice.

Every checkpoint (Lightning's through `AtomicCheckpointIO`, the RL loop's directly) is written by
`write_checkpoint`: a temp file in the same folder, flushed to the disk, renamed over the old one. Every read goes
through `read_checkpoint`, which checks the zip archive's CRCs before torch unpickles it; a resume that meets a
file it cannot read sets it aside (`<name>.unreadable`) and falls back to the one before (cl/run/skeleton.py).
"""
from __future__ import annotations

import io
import os
import random
import signal
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning import Callback

from cl.errors import RunInterrupted
from cl.outputs.results import atomic_write

CHECKPOINT_DIR = "checkpoints"
MID_TASK = "mid_task.ckpt"
LOG_POSITIONS = "cl_log_positions"


def task_checkpoint(run_dir: Path, t: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"task_{t}.ckpt"


def mid_task_checkpoint(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / MID_TASK


def write_checkpoint(path: Path, checkpoint: dict) -> None:
    """Save `checkpoint` with torch.save, atomically (cl.outputs.results.atomic_write): a crash or a full disk leaves the
    previous file at `path` as it was."""
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    atomic_write(path, buf.getvalue())


class UnreadableCheckpoint(Exception):
    """A checkpoint that cannot be used; the message says why, in a few words."""


def read_checkpoint(path: Path, keys: tuple[str, ...], map_location="cpu") -> dict:
    """The checkpoint at `path`, verified: a complete zip archive (torch's format) whose members match their CRCs,
    that torch can load and that holds `keys`; UnreadableCheckpoint otherwise."""
    path = Path(path)
    if not path.exists():
        raise UnreadableCheckpoint("the file is missing")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile) as e:
        raise UnreadableCheckpoint(f"truncated or not a checkpoint: {e}") from None
    if bad is not None:
        raise UnreadableCheckpoint(f"its member {bad} does not match its checksum")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # whatever unpickling a damaged or foreign file raises
        first_line = (str(e).splitlines() or [""])[0]
        raise UnreadableCheckpoint(f"torch cannot load it: {type(e).__name__}: {first_line}") from None
    missing = [key for key in keys if key not in checkpoint]
    if missing:
        raise UnreadableCheckpoint(f"it lacks {', '.join(missing)}")
    return checkpoint


def set_aside(path: Path) -> Path:
    """Move an unreadable checkpoint out of the way under a name no resume reads (`<name>.unreadable`, numbered
    when that is taken), so that nobody loses a file they might still want to look at."""
    path = Path(path)
    aside, n = path.with_name(f"{path.name}.unreadable"), 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}.unreadable.{n}"), n + 1
    path.rename(aside)
    return aside


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer (`Trainer.save_checkpoint`, rank 0) through write_checkpoint."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        write_checkpoint(Path(path), checkpoint)


class StopRequests:
    """SIGINT and SIGTERM handlers for the whole run: the first signal only asks the run to stop at its next safe
    point (a batch boundary, or the end of a task's bookkeeping); a second one stops at once (KeyboardInterrupt), and
    the run resumes from its newest checkpoint."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequests":
        for s in self.SIGNALS:
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self.handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def handle(self, signum, frame):
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping at once")
        self.signum = signum

    def reinstall(self):
        """Take SIGTERM back from Lightning, which installs its own handler at each fit (it would stop inside
        validation, where no consistent checkpoint can be taken); Lightning restores ours after the fit."""
        for s in self.SIGNALS:
            signal.signal(s, self.handle)

    def agreed(self) -> bool:
        """Whether the run should stop now; under DDP every rank stops at the same step (rank 0's signal or any)."""
        requested = self.signum is not None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([self.signum or 0], dtype=torch.int64)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and self.signum is None:
                self.signum = int(flag.item())
            requested = bool(flag.item())
        return requested


def rng_states() -> dict:
    """Every RNG the training may draw from, as plain types and tensors (Lightning loads checkpoints with
    torch.load(weights_only=True), which refuses numpy arrays)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.copy()), pos, has_gauss, gauss),
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass
class ResumePoint:
    """Where a mid-task checkpoint left its task."""

    epoch: int
    batches_done: int
    rng: dict
    loss_sum: float | None
    n_batches: int
    train_seconds: float


class MidTaskCheckpoints(Callback):
    """Writes `mid_task.ckpt` at a batch boundary when a stop was requested (then raises RunInterrupted) or every
    `every_n_steps` steps, and on a resumed fit restores the RNG states and the epoch's running loss just before the
    first batch. Must come after the schedule callback (its state is part of the checkpoint)."""

    def __init__(self, run_dir: Path, stops: StopRequests, every_n_steps: int | None, loggers: list):
        self.path = mid_task_checkpoint(run_dir)
        self.stops, self.every_n_steps, self.loggers = stops, every_n_steps, loggers
        self.resume: ResumePoint | None = None
        self.timer = None  # the TaskTimer, for the task's training time so far
        self._batch_idx = -1
        self._saved_at = 0  # global step of the last periodic save in this task

    def on_train_start(self, trainer, pl_module):
        self.stops.reinstall()
        self._saved_at = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.resume is not None:  # the first batch after a mid-task resume: continue the RNG streams as they were
            set_rng_states(self.resume.rng)
            pl_module.restore_epoch_loss(self.resume.loss_sum, self.resume.n_batches)
            self.resume = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._batch_idx = batch_idx
        stop = self.stops.agreed()
        # not after an epoch's last batch: its validation and epoch end are still to run, and Lightning would resume
        # from there in the next epoch; a stop waits for the next batch (or, in the last epoch, the task's end)
        if batch_idx + 1 >= trainer.num_training_batches:
            return
        if stop:
            self.save(trainer)
            raise RunInterrupted(self.stops.signum, f"in task {pl_module.task_id + 1}, epoch "
                                 f"{trainer.current_epoch + 1}, after batch {batch_idx + 1}")
        # a multiple of n steps was reached or passed (online approaches take many steps per batch)
        if self.every_n_steps and trainer.global_step // self.every_n_steps > self._saved_at // self.every_n_steps:
            self._saved_at = trainer.global_step
            self.save(trainer)

    def save(self, trainer: pl.Trainer):
        for lg in self.loggers:  # flush, so the checkpoint can record how far each log file got
            lg.save()
        trainer.save_checkpoint(self.path)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        # how far each log got (the caller flushed them): a run resumed from here drops what came later
        checkpoint[LOG_POSITIONS] = log_positions(self.loggers)
        if not trainer.training:  # a task-end checkpoint: nothing to resume inside the task
            return
        checkpoint["cl_resume"] = {
            "epoch": trainer.current_epoch, "batches_done": self._batch_idx + 1, "rng": rng_states(),
            "loss_sum": None if pl_module._loss_sum is None else float(pl_module._loss_sum),
            "n_batches": pl_module._n_batches, "train_seconds": self.timer.elapsed() if self.timer else 0.0}


def read_resume_point(checkpoint: dict) -> ResumePoint | None:
    info = checkpoint.get("cl_resume")
    return ResumePoint(**info) if info else None


def log_positions(loggers: list) -> dict:
    """How far each log got, by logger class (the caller flushed them)."""
    return {type(lg).__name__: lg.log_position() for lg in loggers if hasattr(lg, "log_position")}


def continue_logs(loggers: list, checkpoint: dict | None) -> None:
    """Make each logger continue the interrupted run's files from where `checkpoint` was taken."""
    positions = (checkpoint or {}).get(LOG_POSITIONS, {})
    for lg in loggers:
        if hasattr(lg, "continue_from"):
            lg.continue_from(positions.get(type(lg).__name__))


def remove_quietly(path: Path) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
