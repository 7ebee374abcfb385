"""Hydra multirun sweeps as users run them (subprocesses): a failing job is recorded and the sweep goes on, a sweep
run again into its dir resumes it, and multirun with trainer=ddp runs each job once, on its own ranks (gloo)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cl.errors import ConfigError
from tests.conftest import compose_config, run_cli, run_pipeline

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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.parametrize("launcher,target", [("local", "BasicLauncher"), ("local_parallel", "JoblibLauncher"),
                                             ("slurm", "SlurmLauncher")])
def test_every_launcher_composes(launcher, target, tmp_path):
    from cl.run.sweep import THREADS_PER_JOB  # importing it registers n_jobs' resolver, as train.py does

    cfg = compose_config([f"hydra/launcher={launcher}"], tmp_path)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "local_parallel":  # from the cores and CL_THREADS_PER_JOB
        assert cfg.hydra.launcher.n_jobs == max(1, os.cpu_count() // THREADS_PER_JOB)


@pytest.mark.slow
def test_a_parallel_sweep_runs_its_jobs(tmp_path):
    done = run_cli(["-m", "hydra/launcher=local_parallel", "approach=sgd,ewc", *FAST, f"hydra.sweep.dir={tmp_path}"],
                   env={"CL_THREADS_PER_JOB": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert [j["status"] for j in summary(tmp_path)] == ["complete", "complete"]


def test_the_validation_protocol_never_reads_a_test_split(tmp_path, monkeypatch):
    from data.device_stream import DeviceStream

    read, original = [], DeviceStream.source
    monkeypatch.setattr(DeviceStream, "source", lambda self, t, split: read.append((t, split)) or original(self, t, split))
    results = run_pipeline(["approach=ewc", "protocol=validation", "validation_tasks=3", "trainer.max_epochs=1"],
                           tmp_path)
    assert results["protocol"] == "validation" and len(results["task_names"]) == 3 and results["complete"]
    assert read and all(split != "test" for _, split in read) and max(t for t, _ in read) == 2
    # the same run with protocol=test reads the test splits: the check above can fail
    read.clear()
    run_pipeline(["approach=ewc", "trainer.max_epochs=1"], tmp_path / "test")
    assert any(split == "test" for _, split in read)


@pytest.mark.parametrize("override,says", [("stream.pc_valid=0", "stream.pc_valid > 0"),
                                           ("stream.valid_from_train=true", "stream.valid_from_train=false")])
def test_the_validation_protocol_needs_held_out_validation_splits(override, says, tmp_path):
    with pytest.raises(ConfigError, match=says):
        run_pipeline(["protocol=validation", override, "debug=default"], tmp_path)


@pytest.mark.slow
def test_an_optuna_search_tunes_on_validation_runs(tmp_path):
    done = run_cli(["-m", "approach=ewc", "hparams_search=ewc_lambda", "hydra.sweeper.n_trials=2", *FAST,
                    f"hydra.sweep.dir={tmp_path}"])
    assert done.returncode == 0, done.stderr[-2000:]
    best = (tmp_path / "optimization_results.yaml").read_text()
    assert "approach.lamb" in best and "best_value" in best
    runs = [json.loads(p.read_text()) for p in tmp_path.glob("*/results.json")]
    assert len(runs) == 2 and all(r["protocol"] == "validation" and len(r["task_names"]) == 3 for r in runs)


def wandb_records(run_dir: Path) -> bytes:
    """The offline W&B run's record file (binary; names, tags and groups appear in it as plain text)."""
    return next((run_dir / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()


@pytest.mark.slow
def test_a_sweep_logs_one_wandb_run_per_job_grouped_and_tagged_with_its_files(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_cli(["-m", "approach=blip", "seed=0,1", "debug=default", "logger=wandb", f"hydra.sweep.dir={sweep}"],
                   env={"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_API_KEY": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    for seed, job in enumerate(job_dirs(sweep)):
        records = wandb_records(job)
        for text in (sweep.name, "stream:digits5", "model:mlp", "approach:blip", f"seed:{seed}"):
            assert text.encode() in records, text  # grouped by the sweep, tagged
        run_id = (job / "wandb" / "run_id").read_text().strip()
        assert f"results-{run_id}".encode() in records and f"model-{run_id}".encode() in records  # artifacts
        files = next((job / "wandb").glob("offline-run-*/files"))
        assert (files / "results.json").read_text() == (job / "results.json").read_text()
        assert list((files / "media" / "table").glob("acc_matrix_table_*.table.json"))
        images = {p.name.split("_")[0] for p in (files / "media" / "images").glob("*.png")}
        assert {"acc", "bits"} <= images  # the heatmap and BLIP's bits per layer

    # the W&B files alone (an export) give cl.outputs.report the same table as the run dirs
    from cl.outputs.report import collect, summarize

    export = tmp_path / "export"
    for i, job in enumerate(job_dirs(sweep)):
        shutil.copytree(job / "wandb", export / str(i))
    rows = summarize(collect(export))
    assert rows == summarize(collect(sweep)) and rows[0]["n_seeds"] == 2
