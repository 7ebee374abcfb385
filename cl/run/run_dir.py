"""The run dir: who holds it, whether it can be written, and what a run leaves there when it stops early (light:
imported by train.py before torch).

A run dir belongs to one live run: before Hydra writes anything into it (`.hydra/`, train.log), `RunDirGuard`
checks that it can be made and written and takes its lock, `run.lock` (pid, host, start), made with O_CREAT|O_EXCL.
A second run or a resume into it stops with one `error:` line naming the holder; a lock whose process is gone
(same host, that pid no longer running) is taken over with a note. Rank 0 holds it for all the run's DDP ranks;
a sweep's jobs each lock their own dir. The lock goes when the run ends in any way (train.py, and at exit).

A failed run that saved nothing worth keeping (no finished task, no checkpoint) removes what it created, and the
run dir itself when Hydra made it for this run; one that did save something keeps it and gets `failed.txt` with
the error. A resumed run never removes anything: the run dir belongs to the run it continues.

`python train.py resume=true hydra.run.dir=<run dir>` is all a resume needs: `with_saved_overrides` puts the run's
saved overrides (`<run dir>/.hydra/overrides.yaml`) before the command line's, so that Hydra composes the config the
run was started with; cl/config/checks.py then refuses what would change it."""
from __future__ import annotations

import atexit
import contextlib
import datetime
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from cl.errors import ConfigError

RESULTS_FILE = "results.json"  # the results contract (cl/outputs/results.py)
FAILED_FILE = "failed.txt"
LOG_FILE = "train.log"  # Hydra's job log (hydra.job.name = train), which also gets what the run prints (run_log)
LOCK_FILE = "run.lock"  # the live run that holds the run dir (hold_run_dir)
# what a run dir holds before the job starts: Hydra's entries and the lock
HYDRA_ENTRIES = {".hydra", "train.log", LOCK_FILE}
SAVED_OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"  # the task overrides the run was started with
# the overrides of the run this process resumes, as its run dir held them (set by with_saved_overrides)
SAVED_OVERRIDES: list[str] = []
# the folders Hydra is about to make above this run's dir (set by RunDirGuard): a run that leaves nothing
# behind removes them again
NEW_PARENTS: list[Path] = []


def saved_results(run_dir: Path) -> dict | None:
    """The run dir's results.json, when it has one that can be read (cl.outputs.results.read_results raises on a broken one)."""
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
            try:
                path.write_text(f"{datetime.datetime.now().isoformat(timespec='seconds')} error: {error}\n")
            except OSError:  # the disk is full: the error line on the terminal is all there is
                return None
            return str(path)
        for entry in self.run_dir.iterdir():
            if entry.name not in self.entries_at_start:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        if self.entries_at_start <= HYDRA_ENTRIES:  # Hydra made this folder for this run: nothing else is in it
            shutil.rmtree(self.run_dir)
            remove_new_parents(self.run_dir)
        return None


def remove_empty_folders(folders) -> None:
    """Remove `folders` deepest first, while they are empty (a folder that holds another run's dir, or is gone,
    stops it: the ones above it hold it)."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            break


def remove_new_parents(run_dir: Path) -> None:
    """Remove the folders above `run_dir` that Hydra made for this run (NEW_PARENTS), deepest first, while empty."""
    above = set(Path(run_dir).absolute().parents)
    remove_empty_folders(p for p in NEW_PARENTS if p in above)


def writable_dir(path: Path, key: str) -> None:
    """Make the folder `path` (and the folders above it) and check that a file can be written in it; ConfigError
    naming `key` and the path when it cannot, with whatever this made removed again."""
    path = Path(path).absolute()
    made = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        remove_empty_folders(made)
        blocker = next((p for p in (path, *path.parents) if p.exists()), path)
        why = (f"{blocker} is a file, not a folder" if not blocker.is_dir()
               else f"{e.strerror or e}: {e.filename or path}")
        verb = "created" if made or not blocker.is_dir() else "written"
        raise ConfigError(f"{key}={path} cannot be {verb} ({why}); give a folder this user can write to") from None


def _process_start(pid: int) -> str | None:
    """When the process `pid` started (clock ticks since boot, Linux's /proc), to tell it from a later process
    that got the same pid; None where that cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _running(holder: dict) -> bool:
    """Whether the lock's process still runs (only asked for a lock taken on this host)."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    started = holder.get("started")
    return started is None or _process_start(pid) in (None, started)


def _read_lock(path: Path) -> dict | None:
    """The lock file's holder; None when it is gone, or empty or garbled (a lock being written, or a broken one)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


_HELD: dict[Path, dict] = {}  # the run dirs this process holds, with what their lock files say


def hold_run_dir(run_dir: Path) -> None:
    """Take `run_dir`'s lock for this run: ConfigError, one line naming the holder and the dir, when another live
    run holds it; a lock whose process is gone (same host, pid not running) is taken over with a note. Only rank 0
    locks (the other DDP ranks are the same run); a dir this process holds already is left as it is."""
    run_dir = Path(run_dir).absolute()
    if not is_rank_zero() or run_dir in _HELD:
        return
    path = run_dir / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid()),
          "since": datetime.datetime.now().isoformat(sep=" ", timespec="seconds")}
    waited = 0
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is None and path.exists() and waited < 20:  # just being written by its run
                waited += 1
                time.sleep(0.05)
                continue
            if holder is None and path.exists():
                raise ConfigError(f"{run_dir} holds a lock file that cannot be read ({path}); if no run is using "
                                  f"this run dir, delete it") from None
            if holder is not None and (holder.get("host") != me["host"] or _running(holder)):
                raise ConfigError(f"{run_dir} is in use by another run (pid {holder.get('pid')} on "
                                  f"{holder.get('host')}, since {holder.get('since')}): wait for it to end or give "
                                  f"another hydra.run.dir (if that run is gone, delete {path})") from None
            if holder is not None and _take_over(path, holder):
                print(f"note: {run_dir} was locked by pid {holder.get('pid')} on {holder.get('host')} (since "
                      f"{holder.get('since')}), which is no longer running; this run takes the lock over",
                      file=sys.stderr, flush=True)
            continue
        except OSError as e:
            raise ConfigError(f"hydra.run.dir={run_dir} cannot be written ({e.strerror or e}: {path}); give a "
                              f"folder this user can write to") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
            f.flush()
            os.fsync(f.fileno())
        _HELD[run_dir] = me
        return


def _take_over(path: Path, stale: dict) -> bool:
    """Remove the lock `stale` of a process that is gone; False when another run was quicker (its lock stays)."""
    aside = path.with_name(f"{path.name}.{os.getpid()}.stale")
    try:
        os.rename(path, aside)  # atomic: of two runs taking over at once, one moves the stale lock
    except FileNotFoundError:
        return False
    if _read_lock(aside) != stale:  # the quicker run's own lock was moved: put it back
        os.replace(aside, path)
        return False
    os.unlink(aside)
    return True


def release_run_dir(run_dir: Path) -> None:
    """Give up `run_dir`'s lock, if this process holds it (a failed run's cleanup may have removed the dir)."""
    run_dir = Path(run_dir).absolute()
    mine = _HELD.pop(run_dir, None)
    if mine is not None and _read_lock(run_dir / LOCK_FILE) == mine:
        (run_dir / LOCK_FILE).unlink(missing_ok=True)


@atexit.register
def _release_all() -> None:
    """Whatever ends the process (an error before or after the job, sys.exit, the last Ctrl-C) ends its locks."""
    for run_dir in list(_HELD):
        release_run_dir(run_dir)


def _resolved_dir(config, key: str) -> Path | None:
    """The folder `key` (hydra.run.dir, hydra.sweep.dir) of `config`, as Hydra will make it; None when it cannot
    be resolved yet (Hydra then reports it itself)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_config = HydraConfig.instance()
    before = hydra_config.cfg
    hydra_config.set_config(config)  # for the ${hydra:runtime.choices...} in the run dir's pattern
    try:
        return Path(str(OmegaConf.select(config, key))).absolute()
    except Exception:
        return None
    finally:
        hydra_config.cfg = before


class RunDirGuard(Callback):
    """Hydra callback (conf/hydra/default.yaml), before Hydra makes a single run's dir or a sweep's dir: note which
    folders above it do not exist yet (NEW_PARENTS, e.g. `outputs/mnist5/ewc/` of a first run there), check the
    dir can be made and written, and take a single run's lock (hold_run_dir; a sweep's jobs lock their dirs in
    train.py). A failure is one `error:` line, exit 1, and nothing made; Hydra has not touched the dir yet."""

    def on_run_start(self, config, **kwargs) -> None:
        run_dir = _resolved_dir(config, "hydra.run.dir")
        if run_dir is None:
            return
        NEW_PARENTS[:] = [p for p in run_dir.parents if not p.exists()]
        if is_rank_zero():  # the other DDP ranks run in the dir their rank 0 holds
            _or_exit(lambda: (writable_dir(run_dir, "hydra.run.dir"), hold_run_dir(run_dir)))

    def on_multirun_start(self, config, **kwargs) -> None:
        """A sweep: its dir and the folders above it that do not exist yet (a sweep that stops before its first
        job, e.g. for a mistyped option name, removes them again: remove_new_sweep_dir)."""
        sweep_dir = _resolved_dir(config, "hydra.sweep.dir")
        if sweep_dir is None:
            return
        NEW_PARENTS[:] = [p for p in (sweep_dir, *sweep_dir.parents) if not p.exists()]
        _or_exit(lambda: writable_dir(sweep_dir, "hydra.sweep.dir"))


def _or_exit(check) -> None:
    """Run `check`; a ConfigError is one `error:` line and exit 1 (Hydra would turn a callback's exception into a
    warning and go on)."""
    try:
        check()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


def remove_new_sweep_dir() -> None:
    """Remove the folders a sweep that ran no job made (NEW_PARENTS), with the `multirun.yaml` Hydra wrote first."""
    for folder in NEW_PARENTS:
        if folder.is_dir() and [p.name for p in folder.iterdir()] == ["multirun.yaml"]:
            (folder / "multirun.yaml").unlink()
    remove_empty_folders(NEW_PARENTS)


def _is_override_of(arg: str, key: str) -> bool:
    return "=" in arg and arg.split("=", 1)[0].lstrip("+~") == key


def with_saved_overrides(argv: list[str]) -> list[str]:
    """The command line of `python train.py resume=true hydra.run.dir=<run dir> [overrides]` with the run's saved
    overrides put first (those the command line does not set itself; `resume` never): Hydra then composes the run's
    own config — its group choices, so also its W&B name, group and tags — whatever the command line omits.
    Hydra writes no `.hydra/` for the resumed run, so the run dir keeps the config the run was started with. Unchanged
    for any other command line, a sweep's (`-m`; cl/run/sweep.py resumes those), and a run dir without
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


class _LogFile:
    """The run's train.log, written line by line; on a full disk it stops (the terminal still shows everything) rather
    than fail the print that met it, which may be the run's own error line."""

    def __init__(self, path: Path):
        self._file = open(path, "a", encoding="utf-8")

    def write(self, text: str) -> None:
        if self._file is None:
            return
        try:
            self._file.write(text)
            self._file.flush()
        except OSError:
            self.close()

    def close(self) -> None:
        file, self._file = self._file, None
        if file is None:
            return
        try:
            file.close()
        except OSError:  # what the full disk kept in the buffer is lost
            pass


class _Tee:
    """A text stream that writes to `stream` and, line by line, to the log file `log` (a _LogFile): a line redrawn
    with carriage returns (a progress bar on a terminal) is logged as it was last shown, without escape codes."""

    def __init__(self, stream, log):
        self._stream, self._log, self._pending = stream, log, ""

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        self._pending += text
        if "\n" in self._pending:
            *lines, self._pending = self._pending.split("\n")
            # a bar that clears itself leaves no blank line
            self._log.write("".join(_shown(line) + "\n" for line in lines if _shown(line) or "\r" not in line))
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
    log = _LogFile(run_dir / name)
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
        log.close()
