"""Every approach on every model and both head modes, in debug mode through the real pipeline: it runs, or it is a
combination the approach cannot handle and stops before training with one ConfigError line and no results. Each
approach's default end-to-end run (digits5, MLP) is in test_pipeline.py; this matrix runs under -m slow."""
from __future__ import annotations

import pytest

from cl.errors import ConfigError, first_cl_error
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, config_options, run_pipeline

APPROACHES = config_options("approach")
# every model of conf/model/, at tiny widths (whichever of these knobs its trunk has) on a generated image fixture:
# CIFAR's 32×32, or miniImageNet's 84×84 for the trunks built for it; the MLP on digits5. Wiring, not accuracy.
TINY_TRUNK = {"hidden_sizes": "[32,32]", "mul": "0.125", "fc_sizes": "[32,16]", "input_size": "64"}
STREAMS = {"mlp": "digits5", "alexnet84": "miniimagenet20", "resnet18": "miniimagenet20"}


def model_overrides(model: str) -> list[str]:
    trunk = OmegaConf.load(CONF_DIR / "model" / f"{model}.yaml").trunk
    return [f"stream={STREAMS.get(model, 'cifar_alt')}",
            *(f"model.trunk.{k}={v}" for k, v in TINY_TRUNK.items() if k in trunk)]


MODELS = {m: model_overrides(m) for m in config_options("model")}
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
