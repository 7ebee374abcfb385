"""What a run leaves in its run dir when it stops early (light: imported by train.py before torch).

A failed run that saved nothing worth keeping (no finished task, no checkpoint) removes what it created, and the
run dir itself when Hydra made it for this run; one that did save something keeps it and gets `failed.txt` with
the error. A resumed run never removes anything: the run dir belongs to the run it continues.

`python train.py resume=true hydra.run.dir=<run dir>` is all a resume needs: `with_saved_overrides` puts the run's
saved overrides (`<run dir>/.hydra/overrides.yaml`) before the command line's, so that Hydra composes the config the
run was started with; cl/config_check.py then refuses what would change it."""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import sys
import traceback
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

RESULTS_FILE = "results.json"  # the results contract (cl/results.py)
FAILED_FILE = "failed.txt"
LOG_FILE = "train.log"  # Hydra's job log (hydra.job.name = train), which also gets what the run prints (run_log)
HYDRA_ENTRIES = {".hydra", "train.log"}  # what Hydra writes into a run dir before the job starts
SAVED_OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"  # the task overrides the run was started with
# the overrides of the run this process resumes, as its run dir held them (set by with_saved_overrides)
SAVED_OVERRIDES: list[str] = []
# the folders Hydra is about to make above this run's dir (set by RunDirParents): a run that leaves nothing
# behind removes them again
NEW_PARENTS: list[Path] = []


def saved_results(run_dir: Path) -> dict | None:
    """The run dir's results.json, when it has one that can be read (cl.results.read_results raises on a broken one)."""
    try:
        return json.loads((Path(run_dir) / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return None


def recorded_failure(run_dir: Path) -> str | None:
    """The error line of the run dir's failed.txt, None when it has none."""
    path = Path(run_dir) / FAILED_FILE
    if not path.exists():
        return None
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(empty failed.txt)"


class RunDirState:
    """The run dir's entries when the job started, so that a failure removes only what this run added."""

    def __init__(self, run_dir: Path, resuming: bool):
        self.run_dir, self.resuming = Path(run_dir), resuming
        self.entries_at_start = set(p.name for p in self.run_dir.iterdir()) if self.run_dir.is_dir() else set()

    def _saved_progress(self) -> bool:
        checkpoints = self.run_dir / "checkpoints"
        if checkpoints.is_dir() and any(checkpoints.glob("*.ckpt")):
            return True
        return (saved_results(self.run_dir) or {}).get("tasks_done", 0) > 0

    def settle_failure(self, error: str, keep: bool = False) -> str | None:
        """Clean up after a failed run; returns where the error was recorded, if the run dir was kept. `keep`: record
        the error even when nothing was saved (a sweep's job: its summary points at it)."""
        if not self.run_dir.is_dir() or (self.resuming and not keep):
            return None
        if keep or self._saved_progress():
            path = self.run_dir / FAILED_FILE
            path.write_text(f"{datetime.datetime.now().isoformat(timespec='seconds')} error: {error}\n")
            return str(path)
        for entry in self.run_dir.iterdir():
            if entry.name not in self.entries_at_start:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        if self.entries_at_start <= HYDRA_ENTRIES:  # Hydra made this folder for this run: nothing else is in it
            shutil.rmtree(self.run_dir)
            remove_new_parents(self.run_dir)
        return None


def remove_new_parents(run_dir: Path) -> None:
    """Remove the folders above `run_dir` that Hydra made for this run (NEW_PARENTS), deepest first, while empty."""
    above = set(Path(run_dir).absolute().parents)
    for folder in sorted((p for p in NEW_PARENTS if p in above), key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:  # not empty (another run's dir is there) or gone
            break


class RunDirParents(Callback):
    """Hydra callback (conf/hydra/default.yaml): before Hydra makes a single run's dir, note which folders above it
    do not exist yet (NEW_PARENTS), e.g. `outputs/mnist5/ewc/` of a first run there."""

    def on_run_start(self, config, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        hydra_config = HydraConfig.instance()
        before = hydra_config.cfg
        hydra_config.set_config(config)  # for the ${hydra:runtime.choices...} in the run dir's pattern
        try:
            run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir"))).absolute()
        except Exception:  # a pattern that cannot be resolved yet: Hydra reports it itself
            return
        finally:
            hydra_config.cfg = before
        NEW_PARENTS[:] = [p for p in run_dir.parents if not p.exists()]

    def on_multirun_start(self, config, **kwargs) -> None:
        """A sweep: its dir and the folders above it that do not exist yet (a sweep that stops before its first
        job, e.g. for a mistyped option name, removes them again: remove_new_sweep_dir)."""
        try:
            sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).absolute()
        except Exception:
            return
        NEW_PARENTS[:] = [p for p in (sweep_dir, *sweep_dir.parents) if not p.exists()]


def remove_new_sweep_dir() -> None:
    """Remove the folders a sweep that ran no job made (NEW_PARENTS), with the `multirun.yaml` Hydra wrote first."""
    for folder in sorted(NEW_PARENTS, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and [p.name for p in folder.iterdir()] == ["multirun.yaml"]:
            (folder / "multirun.yaml").unlink()
        try:
            folder.rmdir()
        except OSError:  # not empty or gone
            break


def _is_override_of(arg: str, key: str) -> bool:
    return "=" in arg and arg.split("=", 1)[0].lstrip("+~") == key


def with_saved_overrides(argv: list[str]) -> list[str]:
    """The command line of `python train.py resume=true hydra.run.dir=<run dir> [overrides]` with the run's saved
    overrides put first (those the command line does not set itself; `resume` never): Hydra then composes the run's
    own config — its group choices, so also its W&B name, group and tags — whatever the command line omits.
    Hydra writes no `.hydra/` for the resumed run, so the run dir keeps the config the run was started with. Unchanged
    for any other command line, a sweep's (`-m`; cl/sweep.py resumes those), and a run dir without
    `.hydra/overrides.yaml`."""
    args = argv[1:]
    if "-m" in args or "--multirun" in args:
        return argv
    if not any(_is_override_of(a, "resume") and a.split("=", 1)[1].strip().lower() == "true" for a in args):
        return argv
    run_dirs = [a.split("=", 1)[1].strip("'\"") for a in args if _is_override_of(a, "hydra.run.dir")]
    if not run_dirs:
        return argv
    try:
        saved = [str(o) for o in OmegaConf.load(Path(run_dirs[-1]) / SAVED_OVERRIDES_FILE)]
    except Exception:  # no run there, or not one Hydra started: the resume check says what is missing
        return argv
    SAVED_OVERRIDES[:] = saved
    given = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a or a.startswith("~")}
    again = [o for o in saved if o.split("=", 1)[0].lstrip("+~") not in given | {"resume"}]
    # Hydra would rewrite .hydra/ before the run checks this command line: the run dir keeps its own
    keep = [] if "hydra.output_subdir" in given else ["hydra.output_subdir=null"]
    # beside the command line's first override: its options (--cfg job) stay in front of all overrides
    at = next(i for i, a in enumerate(args) if "=" in a and not a.startswith("-"))
    return [argv[0], *args[:at], *again, *keep, *args[at:]]


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in `run_dir` (the data root too, when it was given on the command
    line: a resumed run reads its data from the current setting)."""
    extra = ""
    try:
        from hydra.core.hydra_config import HydraConfig

        extra = "".join(f" {o}" for o in HydraConfig.get().overrides.task if o.startswith("paths.data_dir="))
    except ValueError:  # not running under Hydra
        pass
    return f"resume with: python train.py resume=true hydra.run.dir={run_dir}{extra}"


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _Tee:
    """A text stream that writes to `stream` and, line by line, to the log file `log`: a line redrawn with carriage
    returns (a progress bar on a terminal) is logged as it was last shown, without terminal escape codes."""

    def __init__(self, stream, log):
        self._stream, self._log, self._pending = stream, log, ""

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        self._pending += text
        if "\n" in self._pending:
            *lines, self._pending = self._pending.split("\n")
            # a bar that clears itself leaves no blank line
            self._log.write("".join(_shown(line) + "\n" for line in lines if _shown(line) or "\r" not in line))
            self._log.flush()
        if "\r" in self._pending:  # a redraw: only the newest state is kept
            self._pending = _shown(self._pending)
        return written

    def flush(self) -> None:
        self._stream.flush()

    def close_log(self) -> None:
        if self._pending.strip():
            self._log.write(_shown(self._pending) + "\n")
        self._pending = ""

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the terminal's, file's or pipe's own
        return getattr(self._stream, name)


def _shown(line: str) -> str:
    """What a terminal shows of a line written with carriage returns: its last non-empty redraw."""
    parts = [p for p in line.split("\r") if p.strip()]
    return _ANSI.sub("", parts[-1] if parts else "").rstrip()


_RUN_LOGS: list = []  # the log file of the run in progress (run_log), for to_run_log


def to_run_log(line: str) -> None:
    """Write a line to the run's train.log only, not to the terminal (the epoch lines of a run whose terminal shows
    a bar); nothing outside run_log."""
    if _RUN_LOGS:
        _RUN_LOGS[-1].write(line.rstrip("\n") + "\n")
        _RUN_LOGS[-1].flush()


def is_rank_zero() -> bool:
    """Whether this process is the first of its run (DDP starts the others with their ranks in the environment)."""
    return all(os.environ.get(v, "0") == "0" for v in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


@contextlib.contextmanager
def run_log(run_dir: Path, name: str = LOG_FILE):
    """While the run is in this block, what it prints to stdout and stderr also goes to `<run dir>/train.log`
    (appended: a resumed run continues the file), beside Hydra's log records: the epoch lines, the summary tables,
    the `error:` line of a failed run, the traceback of a crash; a progress bar as the terminal last showed it, and
    the epoch lines that the terminal's bar stands for (to_run_log). Rank 0 only: the other ranks of a DDP run
    print nothing of their own."""
    run_dir = Path(run_dir)
    if not (run_dir.is_dir() and is_rank_zero()):
        yield
        return
    with open(run_dir / name, "a", encoding="utf-8") as log:
        out, err = sys.stdout, sys.stderr
        tees = sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
        _RUN_LOGS.append(log)
        try:
            yield
        except Exception:
            log.write(traceback.format_exc())
            raise
        finally:
            _RUN_LOGS.remove(log)
            for tee in tees:
                tee.close_log()
            sys.stdout, sys.stderr = out, err
