"""Every approach on every model and both head modes, in debug mode through the real pipeline: it runs, or it is a
combination the approach cannot handle and stops before training with one ConfigError line and no results. Each
approach's default end-to-end run (digits5, MLP) is in test_pipeline.py; this matrix runs under -m slow."""
from __future__ import annotations

import pytest

from cl.errors import ConfigError, first_cl_error
from tests.conftest import config_options, run_pipeline

APPROACHES = config_options("approach")
# tiny widths on the generated CIFAR fixture (32×32) or miniImageNet fixture (84×84): wiring, not accuracy
MODELS = {
    "mlp": ["stream=digits5", "model.trunk.hidden_sizes=[32,32]"],
    "alexnet": ["stream=cifar_alt", "model.trunk.mul=0.125", "model.trunk.fc_sizes=[32,32]"],
    "alexnet84": ["stream=miniimagenet20", "model.trunk.mul=0.125", "model.trunk.fc_sizes=[32,16]"],
    "resnet18": ["stream=miniimagenet20", "model.trunk.mul=0.125"],
    "resnet18_reduced": ["stream=cifar_alt", "model.trunk.base_width=4"],
    "alexnet_imagenet": ["stream=cifar_alt", "model.trunk.fc_sizes=[32,32]", "model.trunk.input_size=64"],
    "resnet18_imagenet": ["stream=cifar_alt", "model.trunk.input_size=64"],
}
# the combinations that must be refused, with what the line says
REFUSED = {
    ("hat", "shared"): "needs one head per task",
    ("independent", "shared"): "use model.head=multi",
    ("lwf", "shared"): "model.head=multi",
    ("icarl", "multi"): "model.head=shared",
    # HAT masks the units of the trunks it knows (its masks hook their layers)
    ("hat", "resnet18_imagenet", "multi"): "cannot find the units",
}


@pytest.mark.slow
@pytest.mark.parametrize("head", ["multi", "shared"])
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("approach", APPROACHES)
def test_approach_runs_on_model_or_refuses_before_training(approach, model, head, fixture_data, tmp_path):
    overrides = [f"approach={approach}", f"model={model}", f"model.head={head}", *MODELS[model], "debug=default",
                 "eval_max_samples=16", f"paths.data_dir={fixture_data}", "approach.batch_size=8"]
    if "stream=digits5" not in MODELS[model]:
        overrides.append("stream.max_tasks=2")
    expected_refusal = REFUSED.get((approach, model, head)) or REFUSED.get((approach, head))
    if expected_refusal is None:
        assert run_pipeline(overrides, tmp_path)["complete"]
        return
    with pytest.raises(Exception) as err:
        run_pipeline(overrides, tmp_path)
    error = first_cl_error(err.value)
    assert isinstance(error, ConfigError) and expected_refusal in str(error) and "\n" not in str(error)
    assert not (tmp_path / "results.json").exists()
