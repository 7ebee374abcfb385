"""A resumed run is the same run, started as a user starts it: SIGINT in task 1 of a W&B-logged SI run on split MNIST,
then the printed command alone (`python train.py resume=true hydra.run.dir=<run dir>`) continues it with the run's
own config: the same approach, stream, debug settings and loggers, the same W&B run (id, name, group, tags), and
results.json's `config` as the run started it. An override that would change the run is refused; the allowed ones
(cl/config/checks.py RESUME_ALLOWED) pass. The first epoch after a mid-task resume shows its own duration."""
from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from cl.errors import ConfigError
from tests.conftest import ROOT, SHARED_DATA, compose_config, run_cli

# two tasks of split MNIST, a few batches per epoch; task 1 lasts long enough for the SIGINT to land inside it
OVERRIDES = ["stream=mnist5", "approach=si", "logger=[csv,wandb]", "debug=default", "stream.tasks=[[0,1],[2,3]]",
             "trainer.max_epochs=3"]
EPOCH_LINE = re.compile(r"task (\d+)/\d+\s+epoch (\d+)/\d+\s.*?\s([\d.]+) s(?:\s|$)")


def offline_wandb(home: Path) -> dict:
    """W&B offline, with its files under `home` (an API key in the environment would take it online)."""
    return {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_API_KEY": "", "WANDB_DIR": str(home),
            "WANDB_CONFIG_DIR": str(home / "config"), "WANDB_CACHE_DIR": str(home / "cache"),
            "WANDB_DATA_DIR": str(home / "data"), "PYTHONUNBUFFERED": "1"}


def wandb_run_records(run_file: Path) -> list:
    """The `run` records of an offline W&B run file (`run-<id>.wandb`: W&B's LevelDB-style log of protobuf records
    in 32 KiB blocks, after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B"
    runs, pos, payload = [], 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        payload = chunk if kind in (1, 2) else payload + chunk  # full, first; middle, last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            if record.WhichOneof("record_type") == "run":
                runs.append(record.run)
    return runs


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The run interrupted by SIGINT in task 1, then resumed with the command it printed; (run dir, the resume's
    CompletedProcess, its wall-clock seconds, the interrupted run's stderr)."""
    if not (SHARED_DATA / "mnist").exists():
        pytest.skip(f"real MNIST not found in {SHARED_DATA}/mnist")
    tmp = tmp_path_factory.mktemp("resume_identity")
    run_dir, env = tmp / "run", {**os.environ, "CL_DATA_DIR": str(SHARED_DATA), **offline_wandb(tmp / "wandb_home")}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *OVERRIDES, f"hydra.run.dir={run_dir}"],
                            cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "results.json").exists():  # the random-initialisation row: task 1 starts training
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, interrupted_err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, interrupted_err[-3000:]
    assert (run_dir / "checkpoints" / "mid_task.ckpt").exists(), "the SIGINT must land inside task 1"
    printed = re.search(r"resume with: python train\.py (.*)$", interrupted_err, re.M).group(1)
    assert printed == f"resume=true hydra.run.dir={run_dir}"
    t0 = time.monotonic()
    done = run_cli(printed.split(), cwd=tmp, env=env)
    wall = time.monotonic() - t0
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, done, wall


@pytest.mark.slow
def test_the_printed_command_resumes_the_same_run(resumed):
    run_dir, done, _ = resumed
    results = json.loads((run_dir / "results.json").read_text())
    assert results["complete"] and results["task_names"] == ["0-1", "2-3"]
    config = results["config"]
    assert (results["approach"], results["stream"]) == ("si", "mnist5")
    assert (config["approach"]["name"], config["stream"]["name"]) == ("si", "mnist5")
    assert list(config["logger"]) == ["csv", "wandb"]
    assert config["trainer"]["limit_train_batches"] == 3 and config["trainer"]["max_epochs"] == 3  # debug=default
    name, group, tags = "si-mnist5-s0", "mnist5", ["stream:mnist5", "model:mlp", "approach:si", "seed:0"]
    assert (config["run_name"], config["run_group"], config["run_tags"]) == (name, group, tags)
    assert (config["logger"]["wandb"]["name"], config["logger"]["wandb"]["group"]) == (name, group)
    # the run dir keeps the overrides the run was started with
    assert list(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")) == OVERRIDES
    # one W&B run, logged to by both processes under the same id, name, group and tags
    run_id = (run_dir / "wandb" / "run_id").read_text().strip()
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2, files
    for path in files:
        (record,) = wandb_run_records(path)
        assert (record.run_id, record.display_name, record.run_group, list(record.tags)) == (run_id, name, group,
                                                                                            tags)


@pytest.mark.slow
def test_the_first_epoch_after_a_mid_task_resume_shows_its_own_duration(resumed):
    run_dir, done, wall = resumed
    epochs = [EPOCH_LINE.search(line) for line in done.stdout.splitlines()]
    epochs = [(int(m[1]), int(m[2]), float(m[3])) for m in epochs if m]
    assert epochs and epochs[0][0] == 1, done.stdout[-3000:]  # the resume continues inside task 1
    for task, epoch, seconds in epochs:
        assert 0 <= seconds < wall, (task, epoch, seconds, wall)  # not the time since the machine started
    times = json.loads((run_dir / "results.json").read_text())["time_s"]
    assert 0 < sum(times["train"]) < times["total"]


@pytest.mark.slow
def test_a_resume_that_would_change_the_run_is_refused(resumed):
    run_dir, _, _ = resumed
    before = (run_dir / "results.json").read_text()
    refused = run_cli(["resume=true", f"hydra.run.dir={run_dir}", "logger=csv"], cwd=run_dir.parent,
                      env=offline_wandb(run_dir.parent / "wandb_home"))
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert refused.returncode == 1 and len(errors) == 1 and "Traceback" not in refused.stderr
    assert f"resume: logger=csv differs from the run in {run_dir} (it changes logger.wandb)" in errors[0]
    assert (run_dir / "results.json").read_text() == before
    assert list(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")) == OVERRIDES


# --- the check itself, on composed configs (no training) -----------------------------------------------------------
def saved_run(tmp_path: Path, overrides: list[str]) -> dict:
    from cl.run.skeleton import config_dict

    return {"config": config_dict(compose_config(overrides, tmp_path))}


@pytest.mark.parametrize("override", ["checkpoint_every_n_steps=5", "trainer.devices=[0]", "paths.data_dir=/elsewhere",
                                      "callbacks.progress_bar.refresh_rate=1", "stream.download=false"])
def test_allowed_overrides_pass(override, tmp_path):
    from cl.config.checks import check_resume_config

    previous = saved_run(tmp_path, ["approach=sgd", "stream=mnist5"])
    cfg = compose_config(["approach=sgd", "stream=mnist5", "resume=true", override], tmp_path)
    check_resume_config(cfg, previous, tmp_path)
    key, value = override.split("=", 1)
    selected = OmegaConf.select(cfg, key)
    assert (OmegaConf.to_container(selected) if key == "trainer.devices" else selected) == yaml.safe_load(value)


@pytest.mark.parametrize("override,says", [
    ("trainer.devices=2", "trainer.devices=2 is 2 device(s), but the run"),
    ("eval_max_samples=10", "eval_max_samples=10 differs from the run"),
    ("run_name=other", "run_name=other differs from the run"),
    ("debug=default", "debug=default differs from the run"),
])
def test_overrides_that_change_the_run_are_refused(override, says, tmp_path):
    from cl.config.checks import check_resume_config

    previous = saved_run(tmp_path, ["approach=sgd"])
    with pytest.raises(ConfigError, match=re.escape(says)):
        check_resume_config(compose_config(["approach=sgd", "resume=true", override], tmp_path), previous, tmp_path)


def test_a_run_without_saved_overrides_resumes_with_its_saved_config_and_loggers(tmp_path):
    """No .hydra/ to compose from (a run started through the API): the saved values, W&B's name and group too."""
    from cl.config.checks import check_resume_config
    from cl.run.skeleton import config_dict

    previous = saved_run(tmp_path, ["approach=si", "stream=mnist5", "logger=[csv,wandb]", "seed=2"])
    cfg = compose_config(["resume=true"], tmp_path)
    check_resume_config(cfg, previous, tmp_path)
    now = config_dict(cfg)
    assert now["approach"] == previous["config"]["approach"] and now["stream"] == previous["config"]["stream"]
    assert (now["run_name"], now["run_group"], now["seed"]) == ("si-mnist5-s2", "mnist5", 2)
    wandb = now["logger"]["wandb"]
    assert (wandb["name"], wandb["group"], wandb["resume"], wandb["save_dir"]) == ("si-mnist5-s2", "mnist5", True,
                                                                                  str(tmp_path))
