"""End-to-end runs of the task loop, the results contract, every config and recipe, and resume."""
import json

import numpy as np
import pytest
import pytorch_lightning as pl

from cl.outputs.metrics import all_metrics
from tests.conftest import APPROACH_NEEDS, compose_config, config_options, run_pipeline

RESULT_KEYS = {"stream", "approach", "model", "seed", "task_names", "acc_matrix", "random_init_acc", "metrics",
               "time_s", "memory", "approach_info", "config"}
APPROACHES = config_options("approach")
RL_GROUPS = ("rl_stream", "rl_model", "rl_approach", "ppo", "rl_eval")
GROUPS = ["stream", "model", "approach", "trainer", "logger", "callbacks", "paths", "debug", "experiment",
          "hparams_search", *RL_GROUPS]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in config_options(g)])
def test_every_config_composes(group, option, tmp_path):
    cfg = compose_config([f"{group}={option}"], tmp_path)
    if option.startswith("rl_"):  # a continual-RL recipe: every RL group, none of the supervised ones
        assert all(cfg[g]._target_ for g in RL_GROUPS) and "stream" not in cfg
    else:
        assert cfg.stream._target_ and cfg.model._target_ and cfg.approach._target_


def test_default_run_writes_the_results_contract(tmp_path):
    results = run_pipeline(["approach=sgd", "trainer.max_epochs=2"], tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert RESULT_KEYS <= set(on_disk)
    assert on_disk["stream"] == "digits5" and on_disk["seed"] == 0
    T = len(on_disk["task_names"])
    R = np.array(on_disk["acc_matrix"])
    assert R.shape == (T, T) and ((0 <= R) & (R <= 1)).all()
    assert len(on_disk["random_init_acc"]) == T
    assert on_disk["metrics"] == pytest.approx(all_metrics(R, on_disk["random_init_acc"]))
    assert set(on_disk["metrics"]) == {"acc", "bwt", "bwt_blip", "fwt", "forgetting", "la"}
    for key in ("train", "task_end", "eval"):
        assert len(on_disk["time_s"][key]) == T
    assert on_disk["time_s"]["total"] > 0
    assert on_disk["memory"]["params"] > 0 and len(on_disk["memory"]["cl_state_bytes"]) == T
    assert on_disk["complete"] and on_disk["tasks_done"] == T
    assert results["acc_matrix"] == on_disk["acc_matrix"]
    assert (tmp_path / "acc_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (tmp_path / "acc_matrix.csv").read_text().splitlines()
    assert len(rows) == T + 2 and rows[0].startswith("after_task")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [f"task_{t}.ckpt" for t in range(T)]
    assert (tmp_path / "csv" / "metrics.csv").exists()


def test_training_learns_each_task(tmp_path):
    """Fine-tuning on digits5 learns every task when it is trained (diagonal) far above chance."""
    results = run_pipeline(["approach=sgd", "trainer.max_epochs=5"], tmp_path)
    assert np.diag(np.array(results["acc_matrix"])).min() > 0.9


@pytest.mark.parametrize("approach", APPROACHES)
def test_every_approach_runs_in_debug_mode(approach, tmp_path):
    results = run_pipeline([f"approach={approach}", *APPROACH_NEEDS.get(approach, []), "debug=default"], tmp_path)
    assert results["complete"]


def test_independent_keeps_old_tasks_and_joint_trains_on_all_seen(tmp_path):
    ind = run_pipeline(["approach=independent", "trainer.max_epochs=3"], tmp_path / "ind")
    R = np.array(ind["acc_matrix"])
    assert np.allclose(R[-1], np.diag(R))  # a separate network per task: no forgetting at all
    assert ind["memory"]["cl_state_bytes"][0] == 0 < ind["memory"]["cl_state_bytes"][-1]


def test_sgd_frozen_keeps_the_trunk_after_task_one(tmp_path):
    results = run_pipeline(["approach=sgd_frozen", "trainer.max_epochs=3"], tmp_path)
    R = np.array(results["acc_matrix"])
    assert np.allclose(R[-1], np.diag(R))  # frozen trunk + own heads: old tasks unchanged


def test_shared_head_runs_domain_incremental(tmp_path):
    results = run_pipeline(["approach=sgd", "model.head=shared", "debug=default"], tmp_path)
    assert results["complete"]


def test_hat_schedule_restores_and_stops(tmp_path):
    results = run_pipeline(["approach=sgd", "callbacks=hat_schedule", "callbacks.lr_schedule.lr_patience=1", "trainer.max_epochs=30",
                            "approach.lr=0.5"], tmp_path)
    assert results["complete"]


def test_max_epochs_caps_every_task(tmp_path):
    cfg = compose_config(["trainer.max_epochs=1", "callbacks=hat_schedule"], tmp_path)
    assert cfg.trainer.max_epochs == 1


class CrashOnFit:
    """Trainer.fit that raises on its n-th call: an interruption in the middle of a stream."""

    def __init__(self, monkeypatch, crash_at: int):
        self.calls, self.crash_at, self.fit = 0, crash_at, pl.Trainer.fit
        monkeypatch.setattr(pl.Trainer, "fit", self)

    def __get__(self, trainer, owner):
        return lambda *a, **k: self(trainer, *a, **k)

    def __call__(self, trainer, *args, **kwargs):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt("simulated interruption")
        return self.fit(trainer, *args, **kwargs)


@pytest.mark.parametrize("approach", ["sgd", pytest.param("independent", marks=pytest.mark.slow)])
def test_resume_gives_the_same_results_as_an_uninterrupted_run(approach, tmp_path, monkeypatch):
    overrides = [f"approach={approach}", "trainer.max_epochs=2", "seed=3"]
    full = run_pipeline(overrides, tmp_path / "full")

    crash = CrashOnFit(monkeypatch, crash_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(overrides, tmp_path / "cut")
    partial = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert partial["tasks_done"] == 2 and not partial["complete"]
    monkeypatch.setattr(pl.Trainer, "fit", crash.fit)

    resumed = run_pipeline([*overrides, "resume=true"], tmp_path / "cut")
    assert resumed["acc_matrix"] == full["acc_matrix"]
    assert resumed["metrics"] == full["metrics"]
    assert resumed["random_init_acc"] == full["random_init_acc"]
    assert resumed["memory"] == full["memory"]


def test_resume_uses_the_saved_config(tmp_path, monkeypatch):
    """Resuming without repeating the original overrides continues the saved experiment."""
    crash = CrashOnFit(monkeypatch, crash_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(["approach=joint", "trainer.max_epochs=1"], tmp_path)
    monkeypatch.setattr(pl.Trainer, "fit", crash.fit)
    resumed = run_pipeline(["resume=true"], tmp_path)
    assert resumed["approach"] == "joint" and resumed["config"]["trainer"]["max_epochs"] == 1


def test_mnist_streams_run_on_real_mnist(mnist_dir, tmp_path):
    for stream in ("mnist5", "pmnist", "rotmnist"):
        results = run_pipeline([f"stream={stream}", f"paths.data_dir={mnist_dir}", "debug=default", "approach=sgd",
                                "stream.n_tasks=3" if stream != "mnist5" else "stream.pc_valid=0.1"],
                               tmp_path / stream)
        assert results["complete"]
        assert results["stream"] == stream


def test_loggers_get_the_numbers(tmp_path, monkeypatch):
    """csv, TensorBoard and W&B (offline without an API key) all receive the run."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_pipeline(["approach=sgd", "logger=many", "debug=default"], tmp_path)
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/loss", "cl/acc", "acc/0-1"} <= set(header)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


@pytest.mark.slow
def test_two_process_cpu_ddp_run(tmp_path):
    """trainer=ddp on CPU (gloo): ranks share the batches, rank 0 writes the files, evaluation covers every sample."""
    from tests.conftest import run_cli

    proc = run_cli(["approach=sgd", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                    "trainer.max_epochs=5", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["complete"] and results["metrics"]["la"] > 0.8
    assert proc.stdout.count("results:") == 1  # one table, printed by rank 0


def test_first_task_trains_with_its_own_epochs_and_batch_size(tmp_path):
    import torch

    run_pipeline(["approach=sgd", "trainer.max_epochs=1", "first_task.max_epochs=2", "first_task.batch_size=16"],
                 tmp_path)
    steps = [torch.load(tmp_path / "checkpoints" / f"task_{t}.ckpt", weights_only=False)["cl_step_offset"]
             for t in (0, 1)]
    from cl.run.supervised import build

    stream, _ = build(compose_config(["approach=sgd"], tmp_path))
    n_train = [len(stream.tasks[t].train.y) for t in (0, 1)]
    assert steps[0] == 2 * -(-n_train[0] // 16)
    assert steps[1] - steps[0] == -(-n_train[1] // 64)
