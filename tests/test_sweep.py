"""Hydra multirun sweeps as users run them (subprocesses): a failing job is recorded and the sweep goes on, a sweep
run again into its dir resumes it, and multirun with trainer=ddp runs each job once, on its own ranks (gloo)."""
from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli

FAST = ["debug=default", "logger=[]"]


def summary(sweep_dir: Path) -> list[dict]:
    return json.loads((sweep_dir / "sweep_summary.json").read_text())["jobs"]


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir())


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    done = run_cli(["-m", "approach=sgd", "approach.lr=-1,0.1", *FAST, f"hydra.sweep.dir={tmp_path}"])
    assert done.returncode == 1  # the sweep says that a job failed ...
    jobs = summary(tmp_path)
    assert [j["status"] for j in jobs] == ["failed", "complete"]  # ... after running the next one
    assert "approach.lr=-1 is out of range" in jobs[0]["error"]
    failed_dir = Path(jobs[0]["run_dir"])
    assert "approach.lr=-1" in (failed_dir / "failed.txt").read_text()  # the error in the job's own run dir
    assert json.loads((Path(jobs[1]["run_dir"]) / "results.json").read_text())["complete"]
    assert "1 failed" in done.stdout


def test_a_sweep_run_again_skips_complete_jobs_and_resumes_partial_ones(tmp_path):
    args = ["-m", "approach=sgd,ewc", *FAST, f"hydra.sweep.dir={tmp_path}"]
    assert run_cli(args).returncode == 0
    first, second = job_dirs(tmp_path)
    whole = json.loads((first / "results.json").read_text())
    # the first job as if killed after its second task: results.json written up to there, later checkpoints kept
    cut = dict(whole, acc_matrix=whole["acc_matrix"][:2], tasks_done=2, complete=False)
    for key in ("train", "task_end", "eval", "io"):
        cut["time_s"] = dict(cut["time_s"], **{key: whole["time_s"][key][:2]})
    cut["memory"] = dict(whole["memory"], cl_state_bytes=whole["memory"]["cl_state_bytes"][:2])
    (first / "results.json").write_text(json.dumps(cut))
    second_before = (second / "results.json").read_text()

    again = run_cli(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"skipped: {second} is complete" in again.stdout
    assert (second / "results.json").read_text() == second_before
    resumed = json.loads((first / "results.json").read_text())
    assert resumed["complete"] and resumed["acc_matrix"] == whole["acc_matrix"]
    assert [j["status"] for j in summary(tmp_path)] == ["complete", "complete"]


def test_multirun_with_ddp_runs_each_job_once_on_its_own_ranks(tmp_path):
    outputs = tmp_path / "cwd"
    outputs.mkdir()
    done = run_cli(["-m", "approach=sgd,ewc", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *FAST,
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=outputs)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = job_dirs(tmp_path / "sweep")
    assert len(jobs) == 2 and [j["status"] for j in summary(tmp_path / "sweep")] == ["complete", "complete"]
    for job in jobs:  # rank 1 ran this job, in this job's dir
        assert (job / "train_ddp_process_1.log").exists()
    assert (done.stdout + done.stderr).count("Launching 2 jobs") == 1  # the sweep started once, by the user
    assert not list(outputs.rglob("results.json"))  # no rank started a sweep or a run of its own elsewhere
