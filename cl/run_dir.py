"""What a run leaves in its run dir when it stops early (light: imported by train.py before torch).

A failed run that saved nothing worth keeping (no finished task, no checkpoint) removes what it created, and the
run dir itself when Hydra made it for this run; one that did save something keeps it and gets `failed.txt` with
the error. A resumed run never removes anything: the run dir belongs to the run it continues."""
from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

RESULTS_FILE = "results.json"  # the results contract (cl/results.py)
FAILED_FILE = "failed.txt"
HYDRA_ENTRIES = {".hydra", "train.log"}  # what Hydra writes into a run dir before the job starts


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
        return None


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
