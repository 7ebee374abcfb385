"""Every paper recipe in conf/experiment/ runs end to end in debug mode (image streams on generated fixtures,
the first two tasks; MNIST streams on the real files)."""
import pytest

from tests.conftest import CONF_DIR, run_pipeline

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
MNIST_STREAMS = ("mnist5", "pmnist", "rotmnist")
EXTRA = {"blip_mixture5": ["stream.verify_checksums=false"]}  # the fixtures are not the canonical files


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_in_debug_mode(experiment, request, tmp_path):
    text = (CONF_DIR / "experiment" / f"{experiment}.yaml").read_text()
    on_mnist = any(f"override /stream: {s}" in text for s in MNIST_STREAMS)
    # fixture_data swaps in tiny MNIST files, so only the image streams ask for it
    data_dir = request.getfixturevalue("mnist_dir" if on_mnist else "fixture_data")
    overrides = [f"experiment={experiment}", "debug=default", "eval_max_samples=16", f"paths.data_dir={data_dir}"]
    if not on_mnist:
        overrides.append("stream.max_tasks=2")
    results = run_pipeline([*overrides, *EXTRA.get(experiment, [])], tmp_path)
    assert results["complete"] and (tmp_path / "results.json").exists()
