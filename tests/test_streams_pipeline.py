"""Every image stream × image model composes and runs through the real pipeline (debug mode) on the generated
fixtures, and the BLIP experiments that name them run end to end."""
from __future__ import annotations

from pathlib import Path

import pytest

import data.mnist
from tests import fixtures
from tests.conftest import CONF_DIR, run_pipeline

# tiny widths: the pairs check wiring and shapes, not accuracy
MODELS = {
    "alexnet": ["model.trunk.mul=0.125", "model.trunk.fc_sizes=[32,32]"],
    "alexnet84": ["model.trunk.mul=0.125", "model.trunk.fc_sizes=[32,16]"],
    "resnet18": ["model.trunk.mul=0.125"],
    "resnet18_reduced": ["model.trunk.base_width=4"],
}
STREAMS = {
    "cifar_alt": [],
    "mixture5": ["stream.verify_checksums=false"],  # fixture files are not the canonical ones
    "miniimagenet20": [],
    "tinyimagenet4": [],
    "cifar100_split": ["stream.relabel=true", "stream.n_val_tasks=3", "stream.part=cl"],
    "cub_split": [],
    "gem_file": ["stream.path={root}/gem/cifar_tiny.pt"],
}
EXPERIMENTS = ["blip_cifar", "blip_mixture5", "blip_miniimagenet_alexnet", "blip_miniimagenet_resnet18"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("fixtures")
    return root, fixtures.write_all(root)


@pytest.fixture
def fixture_data(data_root, monkeypatch) -> Path:
    root, mnist_table = data_root
    monkeypatch.setattr(data.mnist, "FILES", mnist_table)  # the tiny MNIST instead of the canonical files
    return root


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", STREAMS)
def test_stream_model_pair_runs(stream, model, fixture_data, tmp_path):
    overrides = [f"stream={stream}", f"model={model}", "approach=sgd", "approach.batch_size=8", "debug=default",
                 "eval_max_samples=16", "stream.max_tasks=2", f"paths.data_dir={fixture_data}",
                 *[o.format(root=fixture_data) for o in STREAMS[stream]], *MODELS[model]]
    results = run_pipeline(overrides, tmp_path / "run")
    assert len(results["acc_matrix"]) == 2 and (tmp_path / "run" / "results.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_blip_experiment_runs(experiment, fixture_data, tmp_path):
    if not (CONF_DIR / "experiment" / f"{experiment}.yaml").exists():
        pytest.skip(f"conf/experiment/{experiment}.yaml not written yet")
    overrides = [f"experiment={experiment}", "debug=default", f"paths.data_dir={fixture_data}"]
    if experiment == "blip_mixture5":
        overrides.append("stream.verify_checksums=false")
    results = run_pipeline(overrides, tmp_path / "run")
    assert results["acc_matrix"]
