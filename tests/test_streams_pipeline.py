"""Every image stream × image model composes and runs through the real pipeline (debug mode) on the generated
fixtures (the `fixture_data` fixture of conftest.py)."""
from __future__ import annotations

import pytest

from tests.conftest import run_pipeline

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


# the default run covers every stream and every model once; the other pairs run under -m slow
FAST_PAIRS = {(stream, list(MODELS)[i % len(MODELS)]) for i, stream in enumerate(STREAMS)}
PAIRS = [pytest.param(s, m, marks=() if (s, m) in FAST_PAIRS else pytest.mark.slow) for s in STREAMS for m in MODELS]


@pytest.mark.parametrize("stream,model", PAIRS)
def test_stream_model_pair_runs(stream, model, fixture_data, tmp_path, recwarn):
    overrides = [f"stream={stream}", f"model={model}", "approach=sgd", "approach.batch_size=8", "debug=default",
                 "eval_max_samples=16", "stream.max_tasks=2", f"paths.data_dir={fixture_data}",
                 *[o.format(root=fixture_data) for o in STREAMS[stream]], *MODELS[model]]
    results = run_pipeline(overrides, tmp_path / "run")
    assert len(results["acc_matrix"]) == 2 and (tmp_path / "run" / "results.json").exists()
    # ResNet-18 keeps BatchNorm in eval mode from task 2 on, on purpose: Lightning's warning about it is silenced
    assert not [w for w in recwarn if "in eval mode at the start of training" in str(w.message)]
