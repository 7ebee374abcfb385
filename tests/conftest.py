"""Shared test helpers: compose the project's Hydra config and run the real pipeline in a temp run dir."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import data.mnist
from tests import fixtures
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

if os.environ.get("PYTEST_XDIST_WORKER"):  # one core per worker: torch's own threads would fight the other workers
    os.environ["OMP_NUM_THREADS"] = "1"  # for the runs started as subprocesses too
    import torch

    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
# real MNIST shipped beside the project (tests and benchmarks read it; CI has it at ../shared/data)
SHARED_DATA = Path(os.environ.get("CL_SHARED_DATA", ROOT.parent / "shared" / "data"))


def config_options(group: str) -> list[str]:
    """The options of a config group (`conf/<group>/*.yaml`), sorted."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# what an approach needs beyond the default config to run at all (the class-incremental iCaRL: one shared head)
APPROACH_NEEDS = {"icarl": ["model.head=shared"]}


def compose_config(overrides: list[str], run_dir: Path) -> DictConfig:
    """The config `python train.py <overrides>` would get, with its run dir at `run_dir`."""
    importlib.import_module("cl.run.sweep")  # registers the config's resolvers, as train.py's import of it does
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"paths.output_dir={run_dir}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # so ${hydra:...} interpolations resolve as in a real run
    return cfg


def run_pipeline(overrides: list[str], run_dir: Path) -> dict:
    from cl.run.supervised import run

    return run(compose_config(overrides, run_dir))


def run_cli(args: list[str], cwd: Path = ROOT, env: dict | None = None, timeout: int = 300, text: bool = True):
    """Run `python train.py args` in a subprocess (for messages and exit codes as a user sees them); a variable
    that `env` maps to None is left out of the subprocess's environment. `text=False`: the output as bytes, as
    written (text mode reads a carriage return as a line end)."""
    full_env = {**os.environ, "CL_DATA_DIR": str(SHARED_DATA), **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=text, timeout=timeout)


@pytest.fixture
def fit_task(tmp_path):
    """fit(approach, data, t, epochs=1, callbacks=(), validate=False): one task of an approach through a real
    Lightning Trainer, as the pipeline trains it (shuffled batches seeded by t), outside the pipeline."""
    import pytorch_lightning as pl

    from cl.run.skeleton import quiet_lightning
    from data.tensor_loader import TaskBatches

    def fit(approach, data, t: int, epochs: int = 1, callbacks=(), validate: bool = False):
        approach.task_id = t
        trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                             enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                             limit_val_batches=None if validate else 0, callbacks=list(callbacks),
                             default_root_dir=tmp_path)
        valid = TaskBatches(approach.valid_sources(data, t), 256) if validate else None
        with quiet_lightning():  # as the pipeline fits (no "no val_dataloader" warning without validation)
            trainer.fit(approach, TaskBatches(approach.train_sources(data, t), approach.hparams.batch_size,
                                              shuffle=True, seed=t), valid)
        return trainer

    return fit


@pytest.fixture
def mnist_dir() -> Path:
    if not (SHARED_DATA / "mnist").exists():
        pytest.skip(f"real MNIST not found in {SHARED_DATA}/mnist")
    return SHARED_DATA


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("fixtures")
    return root, fixtures.write_all(root)


@pytest.fixture
def fixture_data(data_root, monkeypatch) -> Path:
    root, mnist_table = data_root
    monkeypatch.setattr(data.mnist, "FILES", mnist_table)  # the tiny MNIST instead of the canonical files
    return root
