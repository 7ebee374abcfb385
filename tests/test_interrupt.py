"""Interrupted runs resume exactly: SIGINT and SIGTERM at random points (a training batch, validation, the task-end
work, the evaluation), SIGKILL with periodic checkpoints; the resumed run's results.json and its CSV log equal an
uninterrupted run's, and the resume messages say what happens."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
from pytorch_lightning import Callback

from cl.errors import RunInterrupted
from tests.conftest import APPROACH_NEEDS, ROOT, SHARED_DATA, compose_config, config_options, run_pipeline

# three tasks of digits5, three epochs each: a few seconds per run
OVERRIDES = ["stream.tasks=[[0,1],[2,3],[4,5]]", "trainer.max_epochs=3", "approach.batch_size=32", "seed=1"]
PHASES = ("train batch", "validation", "task end", "evaluation")
COMPARED = ("acc_matrix", "random_init_acc", "metrics", "memory", "forgetting_per_task", "task_names")


class SignalAt(Callback):
    """Sends `signum` to this process at the n-th occurrence of `phase` (as if it arrived just then)."""

    HOOKS = {"train batch": "on_train_batch_start", "validation": "on_validation_batch_start",
             "task end": "on_train_end", "evaluation": "on_fit_end"}

    def __init__(self, phase: str, n: int, signum: int):
        self.hook, self.n, self.signum, self.seen = self.HOOKS[phase], n, signum, 0
        setattr(self, self.hook, self._tick)

    def _tick(self, *args, **kwargs):
        self.seen += 1
        if self.seen == self.n:
            os.kill(os.getpid(), self.signum)


@pytest.fixture
def with_callback(monkeypatch):
    """Attach a callback to every Trainer the pipeline makes."""
    extra: list[Callback] = []
    original = pl.Trainer.__init__

    def init(self, *args, callbacks=None, **kwargs):
        original(self, *args, callbacks=[*extra, *(callbacks or [])], **kwargs)

    monkeypatch.setattr(pl.Trainer, "__init__", init)
    return extra


_UNINTERRUPTED: dict[tuple, tuple[dict, str]] = {}


def uninterrupted(overrides: list[str], tmp_path_factory) -> tuple[dict, str]:
    """results.json and metrics.csv of a run nobody interrupts (once per configuration)."""
    key = tuple(overrides)
    if key not in _UNINTERRUPTED:
        run_dir = tmp_path_factory.mktemp("uninterrupted")
        results = run_pipeline(overrides, run_dir)
        _UNINTERRUPTED[key] = results, (run_dir / "csv" / "metrics.csv").read_text()
    return _UNINTERRUPTED[key]


def assert_same_run(run_dir: Path, reference: tuple[dict, str]):
    results = json.loads((run_dir / "results.json").read_text())
    assert results["complete"]
    for key in COMPARED:
        assert results[key] == reference[0][key], key
    assert (run_dir / "csv" / "metrics.csv").read_text() == reference[1]  # every row, none twice


def interrupt_and_resume(overrides, run_dir, with_callback, points: list[tuple[str, int, int]]):
    """Interrupt at each point in turn (each run resuming the previous one; a point the rest of the run never
    reaches lets it finish), then finish the run."""
    for i, (phase, n, signum) in enumerate(points):
        with_callback[:] = [SignalAt(phase, n, signum)]
        try:
            run_pipeline([*overrides, *(["resume=true"] if i else [])], run_dir)
        except RunInterrupted as stopped:
            assert stopped.signum == signum and stopped.exit_code == 128 + signum
            assert (run_dir / "results.json").exists()
            continue
        assert i > 0, "the first interrupt must happen"
        break
    with_callback[:] = []
    return run_pipeline([*overrides, "resume=true"], run_dir)


def random_points(seed: int, signum: int, count: int = 2) -> list[tuple[str, int, int]]:
    rng = random.Random(seed)
    # a phase, and which occurrence of it (counted from the start of the run that is interrupted)
    limits = {"train batch": 12, "validation": 5, "task end": 2, "evaluation": 2}
    return [(phase, rng.randint(1, limits[phase]), signum) for phase in rng.sample(PHASES, count)]


@pytest.mark.parametrize("approach,signum,seed", [("blip", signal.SIGINT, 0), ("sgd", signal.SIGTERM, 1)])
def test_signals_at_random_points_then_resume_give_the_uninterrupted_run(approach, signum, seed, tmp_path,
                                                                       tmp_path_factory, with_callback):
    overrides = [f"approach={approach}", *OVERRIDES]
    reference = uninterrupted(overrides, tmp_path_factory)
    points = random_points(seed, signum)
    interrupt_and_resume(overrides, tmp_path, with_callback, points)
    assert_same_run(tmp_path, reference)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("approach", ["blip", "sgd"])
def test_more_random_interrupts(approach, signum, seed, tmp_path, tmp_path_factory, with_callback):
    overrides = [f"approach={approach}", *OVERRIDES]
    reference = uninterrupted(overrides, tmp_path_factory)
    interrupt_and_resume(overrides, tmp_path, with_callback, random_points(100 + seed, signum, count=3))
    assert_same_run(tmp_path, reference)


APPROACHES = config_options("approach")


@pytest.mark.slow
@pytest.mark.parametrize("approach", APPROACHES)
def test_every_approach_resumes_mid_task_exactly(approach, tmp_path, tmp_path_factory, with_callback):
    """Each approach's state (importances, anchors, running path integrals, masks, old models, bits) is in its
    checkpoints: two interrupts inside tasks, then the run ends as one nobody interrupted."""
    overrides = [f"approach={approach}", *APPROACH_NEEDS.get(approach, []), *OVERRIDES]
    if "chunk_batches" in compose_config(overrides, tmp_path).approach:  # online: 2 batches per training_step
        overrides.append("approach.chunk_batches=2")
    reference = uninterrupted(overrides, tmp_path_factory)
    points = [("train batch", 11, signal.SIGTERM), ("train batch", 15, signal.SIGINT)]
    interrupt_and_resume(overrides, tmp_path, with_callback, points)
    assert_same_run(tmp_path, reference)


def test_the_patience_schedule_resumes_mid_task(tmp_path, tmp_path_factory, with_callback):
    """Its best weights, patience and learning rate are part of the mid-task checkpoint."""
    overrides = ["approach=blip", "callbacks=hat_schedule", "callbacks.lr_schedule.lr_patience=1", *OVERRIDES]
    reference = uninterrupted(overrides, tmp_path_factory)
    interrupt_and_resume(overrides, tmp_path, with_callback, [("train batch", 8, signal.SIGTERM)])
    assert_same_run(tmp_path, reference)


def start_cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "CL_DATA_DIR": str(SHARED_DATA), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@pytest.mark.parametrize("approach", ["blip"])
def test_sigkill_resumes_from_the_newest_periodic_checkpoint(approach, tmp_path, tmp_path_factory):
    overrides = [f"approach={approach}", *OVERRIDES, "checkpoint_every_n_steps=2"]
    reference = uninterrupted(overrides, tmp_path_factory)
    proc = start_cli([*overrides, f"hydra.run.dir={tmp_path}"])
    try:
        wait_for(tmp_path / "checkpoints" / "mid_task.ckpt", proc)
        time.sleep(random.Random(0).uniform(0.0, 1.0))
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    resumed = run_pipeline([*overrides, "resume=true"], tmp_path)
    assert resumed["complete"]
    assert_same_run(tmp_path, reference)


def test_sigint_on_the_command_line_prints_the_resume_command(tmp_path):
    proc = start_cli(["approach=sgd", *OVERRIDES, "trainer.max_epochs=200", f"hydra.run.dir={tmp_path}"])
    try:
        wait_for(tmp_path / "results.json", proc)  # the random-initialisation row is written: training starts
        first = proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert first.strip() == f"run dir: {tmp_path}"
    assert proc.returncode == 130, err[-3000:]
    assert f"resume with: python train.py resume=true hydra.run.dir={tmp_path}" in err
    assert "interrupted by SIGINT in task 1" in err
    assert (tmp_path / "checkpoints" / "mid_task.ckpt").exists()
    assert "Traceback" not in err


def test_resume_messages(tmp_path, with_callback, caplog):
    """Interrupted before any checkpoint in task 1: task 1 starts over; a finished run: nothing to resume."""
    overrides = ["approach=sgd", *OVERRIDES, "trainer.max_epochs=1"]
    with_callback[:] = [SignalAt("evaluation", 1, signal.SIGTERM)]
    # stop right after task 1's training, before its evaluation finished: simulate a kill by deleting what the
    # task end would have written, leaving the state of a run killed in task 1 without a mid-task checkpoint
    with pytest.raises(RunInterrupted):
        run_pipeline(overrides, tmp_path)
    for path in (tmp_path / "checkpoints").iterdir():
        path.unlink()
    results = json.loads((tmp_path / "results.json").read_text())
    results.update(acc_matrix=[], tasks_done=0)
    (tmp_path / "results.json").write_text(json.dumps(results))
    with_callback[:] = []
    with caplog.at_level("INFO", logger="cl.run.supervised"):
        run_pipeline([*overrides, "resume=true"], tmp_path)
    assert "no task had finished and no mid-task checkpoint was saved, so task 1 of 3 starts over" in caplog.text


def test_resuming_a_finished_run_says_it_is_complete(tmp_path, capsys):
    overrides = ["approach=sgd", *OVERRIDES, "trainer.max_epochs=1"]
    first = run_pipeline(overrides, tmp_path)
    capsys.readouterr()
    again = run_pipeline([*overrides, "resume=true"], tmp_path)
    out = capsys.readouterr().out
    assert f"the run in {tmp_path} is complete (3 of 3 tasks): nothing to resume" in out
    assert again["acc_matrix"] == first["acc_matrix"]


def test_resume_in_a_folder_without_a_run_says_so(tmp_path):
    from cl.errors import ConfigError

    with pytest.raises(ConfigError, match="holds no results.json"):
        run_pipeline(["approach=sgd", "resume=true"], tmp_path)


def tensorboard_scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.mark.slow
def test_resumed_logs_continue_the_interrupted_ones(tmp_path, tmp_path_factory, with_callback, monkeypatch):
    """CSV: every row once (checked by assert_same_run); TensorBoard: the same series as an uninterrupted run (the
    events after the checkpoint are purged); W&B: the resumed run continues the same run id."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = ["approach=sgd", *OVERRIDES, "logger=many"]
    reference = uninterrupted(overrides, tmp_path_factory)
    reference_dir = Path(reference[0]["config"]["paths"]["output_dir"])
    interrupt_and_resume(overrides, tmp_path, with_callback, [("train batch", 13, signal.SIGTERM)])
    assert_same_run(tmp_path, reference)
    for tag in ("train/loss", "cl/acc"):
        assert tensorboard_scalars(tmp_path, tag) == tensorboard_scalars(reference_dir, tag)
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    # offline-run-<date>_<time>-<run id>, with a "-1" suffix when the resumed run starts within the same second
    run_ids = {re.fullmatch(r"offline-run-\d{8}_\d{6}-([^-]+)(-\d+)?", r.name).group(1) for r in runs}
    assert len(runs) == 2 and len(run_ids) == 1  # one W&B run id, resumed
