"""Every paper recipe in conf/experiment/ runs end to end in debug mode (image streams on generated fixtures,
the first two tasks; MNIST streams on the real files)."""
import pytest

from tests.conftest import compose_config, config_options, run_pipeline
from tests.fixtures import write_torchvision_alexnet, write_torchvision_resnet18

EXPERIMENTS = [e for e in config_options("experiment") if not e.startswith("rl_")]  # RL's: tests/test_rl.py
MNIST_STREAMS = ("mnist5", "pmnist", "rotmnist")
EXTRA = {
    "blip_mixture5": ["stream.verify_checksums=false"],  # the fixtures are not the canonical files
    # narrow widths: LwF checkpoints hold the network twice (with its teacher)
    "lwf_blip_miniimagenet": ["model.trunk.mul=0.125", "model.trunk.fc_sizes=[32,16]"],
    # Ω on a few hundred of each task's 12,000 training images (the recipes use them all)
    "mas_mnist_demo": ["approach.omega_samples=400"],
    "mas_mnist_demo_sequence": ["approach.omega_samples=400"],
    # ImageNet weights written in torchvision's layout at narrow classifier widths; a small resize keeps it quick
    "mas_tinyimagenet4": ["model.trunk.pretrained={alexnet}", "model.trunk.fc_sizes=[32,32]",
                          "model.trunk.input_size=72"],
    # torchvision-layout ResNet-18 weights (random), written for the test
    "bcl_dual_cub": ["model.trunk.pretrained={resnet18}"],
}


# in the default run: the short-task recipe, MAS on real MNIST, and the ImageNet-weights path; every recipe under -m slow
FAST = {"gem_single_pmnist", "mas_mnist_demo", "mas_tinyimagenet4"}


@pytest.mark.parametrize("experiment", [pytest.param(e, marks=() if e in FAST else pytest.mark.slow)
                                        for e in EXPERIMENTS])
def test_experiment_runs_in_debug_mode(experiment, request, tmp_path):
    on_mnist = compose_config([f"experiment={experiment}"], tmp_path).stream.name in MNIST_STREAMS
    # fixture_data swaps in tiny MNIST files, so only the image streams ask for it
    data_dir = request.getfixturevalue("mnist_dir" if on_mnist else "fixture_data")
    overrides = [f"experiment={experiment}", "debug=default", "eval_max_samples=16", f"paths.data_dir={data_dir}"]
    if not on_mnist:
        overrides.append("stream.max_tasks=2")
    extra = EXTRA.get(experiment, [])
    if any("{alexnet}" in o for o in extra):
        weights = write_torchvision_alexnet(tmp_path / "alexnet.pth", (32, 32))
        extra = [o.format(alexnet=weights) for o in extra]
    if any("{resnet18}" in o for o in extra):
        extra = [o.format(resnet18=write_torchvision_resnet18(tmp_path / "resnet18.pth")) for o in extra]
    results = run_pipeline([*overrides, *extra], tmp_path)
    assert results["complete"] and (tmp_path / "results.json").exists()
