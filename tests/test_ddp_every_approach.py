"""Every approach runs under trainer=ddp: 2 CPU processes (gloo), a few batches per task, end to end through
train.py; rank 0 alone writes the results. (That the task-end statistics equal one process's on the same data is
tested per family: tests/test_blip_ddp.py, tests/test_regularizers_ddp.py, tests/test_replay_ddp.py.)"""
import json

import pytest

from tests.conftest import APPROACH_NEEDS, config_options, run_cli


@pytest.mark.slow
@pytest.mark.parametrize("approach", config_options("approach"))
def test_every_approach_runs_on_two_cpu_processes(approach, tmp_path):
    done = run_cli([f"approach={approach}", *APPROACH_NEEDS.get(approach, []), "trainer=ddp",
                    "trainer.accelerator=cpu", "trainer.devices=2", "debug=default", "logger=[]",
                    f"hydra.run.dir={tmp_path}"])
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["complete"] and done.stdout.count("results:") == 1
    assert (tmp_path / "train_ddp_process_1.log").exists()  # rank 1 ran, in this run dir
