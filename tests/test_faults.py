"""Faults around a run lose nothing: a second run into a run dir that a live run holds, a resume that meets an
unreadable checkpoint, a run dir or data root that cannot be used, a disk that fills up mid-write. Each is started
as a user starts it (train.py in a subprocess) and stops with one `error:` line, or goes on with a one-line note,
and the files of the run that was there before are byte for byte what they were."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cl.errors import WriteError, first_cl_error
from cl.outputs.results import results_until, write_results
from cl.run.run_dir import LOCK_FILE, hold_run_dir, release_run_dir
from tests.conftest import ROOT, SHARED_DATA, run_cli, run_pipeline

TWO_TASKS = ["debug=default", "stream.tasks=[[0,1],[2,3]]", "seed=5"]
THREE_TASKS = ["debug=default", "stream.tasks=[[0,1],[2,3],[4,5]]", "seed=5"]


def hashes(folder: Path) -> dict[str, str]:
    """Every file under `folder` by its path relative to it, with the sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- (a) a run dir belongs to one live run --------------------------------------------------------------------------
def test_a_second_run_or_a_resume_into_a_held_run_dir_stops_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    run_pipeline(TWO_TASKS, run_dir)
    hold_run_dir(run_dir)  # this test process is the live run that holds it
    try:
        before = hashes(run_dir)
        holder = json.loads((run_dir / LOCK_FILE).read_text())
        for extra in ([], ["resume=true"]):
            proc = run_cli([*TWO_TASKS, *extra, f"hydra.run.dir={run_dir}"])
            assert proc.returncode == 1
            assert error_line(proc) == (
                f"error: {run_dir} is in use by another run (pid {os.getpid()} on {socket.gethostname()}, since "
                f"{holder['since']}): wait for it to end or give another hydra.run.dir (if that run is gone, delete "
                f"{run_dir / LOCK_FILE})")
            assert proc.stdout == ""
            assert hashes(run_dir) == before
    finally:
        release_run_dir(run_dir)
    assert not (run_dir / LOCK_FILE).exists()


def test_the_lock_of_a_run_that_is_gone_is_taken_over_and_a_failed_run_leaves_no_dir(tmp_path):
    """A stale lock (same host, its pid no longer running) is taken over with a note; the run then fails on a bad
    value, and as it saved nothing its dir goes, lock and all."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stale = {"pid": dead_pid(), "host": socket.gethostname(), "started": None, "since": "2030-01-02 03:04:05"}
    (run_dir / LOCK_FILE).write_text(json.dumps(stale))
    proc = run_cli(["approach.lr=abc", f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 1
    assert "approach.lr='abc' has the wrong type" in error_line(proc)
    assert (f"note: {run_dir} was locked by pid {stale['pid']} on {stale['host']} (since 2030-01-02 03:04:05), "
            f"which is no longer running; this run takes the lock over") in proc.stderr
    assert not run_dir.exists()


# --- (b) unreadable checkpoints ---------------------------------------------------------------------------------------
def truncate(path: Path) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path.read_bytes()


def test_a_resume_falls_back_over_an_unreadable_checkpoint_and_ends_as_the_uninterrupted_run(tmp_path,
                                                                                            tmp_path_factory):
    """Killed after task 2 (its row written, its checkpoint truncated): the resume says which file and why, moves
    it aside, resumes from task 1's checkpoint, trains task 2 again and ends as a run nobody interrupted, its CSV
    log too."""
    reference_dir = tmp_path_factory.mktemp("reference")
    reference = run_pipeline(THREE_TASKS, reference_dir)
    run_dir = tmp_path / "run"
    whole = run_pipeline(THREE_TASKS, run_dir)
    write_results(run_dir, results_until(whole, 2))
    (run_dir / "checkpoints" / "task_2.ckpt").unlink()
    bad = run_dir / "checkpoints" / "task_1.ckpt"
    bad_bytes = truncate(bad)
    before = hashes(run_dir)

    proc = run_cli([*THREE_TASKS, "resume=true", f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    assert (f"checkpoint {bad} cannot be read (truncated or not a checkpoint: File is not a zip file); moved it "
            f"aside to task_1.ckpt.unreadable") in out
    assert f"falling back to {run_dir / 'checkpoints' / 'task_0.ckpt'}; task 2 is trained again" in out
    assert (run_dir / "checkpoints" / "task_1.ckpt.unreadable").read_bytes() == bad_bytes  # kept as it was
    after = hashes(run_dir)
    assert after["checkpoints/task_0.ckpt"] == before["checkpoints/task_0.ckpt"]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["complete"] and results["acc_matrix"] == reference["acc_matrix"]
    assert (run_dir / "csv" / "metrics.csv").read_text() == (reference_dir / "csv" / "metrics.csv").read_text()
    assert not (run_dir / LOCK_FILE).exists()  # released when the run ended


def test_a_resume_without_any_readable_checkpoint_starts_over_with_the_results_cut(tmp_path, caplog):
    """An unreadable mid-task checkpoint and task 1's garbled one: both set aside, the run starts again at task 1,
    keeping its random-initialisation row, and ends as the uninterrupted run."""
    whole = run_pipeline(TWO_TASKS, tmp_path)
    write_results(tmp_path, results_until(whole, 1))
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "task_1.ckpt").rename(checkpoints / "mid_task.ckpt")
    truncate(checkpoints / "mid_task.ckpt")
    first = checkpoints / "task_0.ckpt"
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit inside the weights: only the CRC tells
    first.write_bytes(bytes(data))
    with caplog.at_level("INFO", logger="cl.run.supervised"):
        resumed = run_pipeline([*TWO_TASKS, "resume=true"], tmp_path)
    assert f"checkpoint {checkpoints / 'mid_task.ckpt'} cannot be read (truncated" in caplog.text
    assert f"checkpoint {first} cannot be read (its member archive/data/" in caplog.text
    assert "does not match its checksum); moved it aside to task_0.ckpt.unreadable" in caplog.text
    assert "falling back to the start: no task checkpoint can be read; task 1 is trained again" in caplog.text
    assert resumed["acc_matrix"] == whole["acc_matrix"] and resumed["random_init_acc"] == whole["random_init_acc"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["mid_task.ckpt.unreadable", "task_0.ckpt",
                                                              "task_0.ckpt.unreadable", "task_1.ckpt"]


# --- (c) places the run writes and reads --------------------------------------------------------------------------
def test_a_run_dir_under_a_file_stops_before_hydra_and_makes_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("kept")
    before = hashes(tmp_path)
    for key, place in (("hydra.run.dir", blocker / "run"), ("hydra.sweep.dir", blocker / "sweep")):
        proc = run_cli([*(["-m"] if "sweep" in key else []), f"{key}={place}"])
        assert proc.returncode == 1
        assert error_line(proc) == (f"error: {key}={place} cannot be created ({blocker} is a file, not a folder); "
                                    f"give a folder this user can write to")
        assert hashes(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_run_dir_in_a_read_only_folder_stops_with_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        proc = run_cli([f"hydra.run.dir={locked / 'run'}"])
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 1
    assert f"error: hydra.run.dir={locked / 'run'} cannot be created (Permission denied" in error_line(proc)
    assert list(locked.iterdir()) == []


def test_a_data_root_that_is_a_file_stops_with_one_line_and_leaves_nothing(tmp_path):
    root = tmp_path / "datasets"
    root.write_text("not a folder")
    before = hashes(tmp_path)
    proc = run_cli(["stream=mnist5", f"paths.data_dir={root}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 1
    assert error_line(proc) == (f"error: paths.data_dir={root} is a file, not a folder; give the folder that holds "
                                f"the datasets (CL_DATA_DIR=<folder> or paths.data_dir=<folder>)")
    assert hashes(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["datasets"]


# the disk fills up while results.json is written after task 2: the hook lets the bytes reach the temp file, notes
# what the run dir held at that moment, then fails the flush to the disk as a full disk does
FULL_DISK_HOOK = """
import errno, hashlib, json, os, runpy, sys
from pathlib import Path
real_fsync, run_dir, snapshot, calls = os.fsync, Path(sys.argv[1]), Path(sys.argv[2]), []
def fsync(fd):
    name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    if name.startswith(".results.json.") and len(calls) == 2:
        files = {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted(run_dir.rglob("*")) if p.is_file() and not p.name.startswith(".results.json.")}
        snapshot.write_text(json.dumps(files))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if name.startswith(".results.json."):
        calls.append(name)
    return real_fsync(fd)
os.fsync = fsync
sys.argv = ["train.py", *sys.argv[3:], f"hydra.run.dir={run_dir}"]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="the hook names files by /proc/self/fd")
def test_a_full_disk_while_writing_the_results_keeps_the_previous_files_and_stops_with_one_line(tmp_path):
    run_dir, snapshot = tmp_path / "run", tmp_path / "at_failure.json"
    env = {**os.environ, "CL_DATA_DIR": str(SHARED_DATA)}
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_HOOK, str(run_dir), str(snapshot), *THREE_TASKS],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert error_line(proc) == (
        f"error: could not write {run_dir / 'results.json'} (No space left on device); the previous results.json is "
        f"unchanged (recorded in {run_dir / 'failed.txt'}; resume with: python train.py resume=true "
        f"hydra.run.dir={run_dir})")
    at_failure, after = json.loads(snapshot.read_text()), hashes(run_dir)
    del at_failure["train.log"], at_failure[LOCK_FILE]  # the log goes on; the lock goes with the run
    # results.json and acc_matrix.csv of task 1, the checkpoints, the CSV log: as they were
    assert {name: after[name] for name in at_failure} == at_failure
    # what a failed run writes, the figures drawn when a run stops; no temp file left
    assert set(after) - set(at_failure) == {"train.log", "failed.txt", "acc_matrix.png", "bits.png"}
    assert json.loads((run_dir / "results.json").read_text())["tasks_done"] == 1
    assert not (run_dir / LOCK_FILE).exists()


def test_a_full_disk_met_by_any_writer_is_one_line():
    """A logger's file (written outside the run's own writers) on a full disk: no traceback either."""
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/csv/metrics.csv")
    try:
        raise RuntimeError("the logger failed") from full
    except RuntimeError as e:
        error = first_cl_error(e)
    assert isinstance(error, WriteError)
    assert str(error) == "could not write /runs/x/csv/metrics.csv (No space left on device): free space and resume"
