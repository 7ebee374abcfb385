"""Evaluation under DDP: each rank scores its block of every test set's batches and the counts are all-reduced, so 2
gloo processes give the accuracy matrix of 1 process exactly, also for the approaches that predict their own way (HAT's
masks, iCaRL's nearest mean of exemplars, BCL-Single's adapted copies, a network per task)."""
from __future__ import annotations

import functools

import pytest
import torch

from tests.conftest import compose_config, run_pipeline
from tests.gloo import on_two_ranks

# 2 tasks of digits5, test sets scored in batches of 16 (several per task, split between the ranks), all samples
COMMON = ["stream.tasks=[[0,1],[2,3]]", "debug=default", "eval_max_samples=null", "approach.eval_batch_size=16",
          "logger=[]", "seed=3"]
APPROACHES = {"sgd": [], "hat": [], "icarl": ["model.head=shared"], "independent": [],
              "bcl_single": ["approach.adapt=true"]}


def _overrides(name: str) -> list[str]:
    return [f"approach={name}", *APPROACHES[name], *COMMON]


def _matrices(run_dirs: dict[str, str]) -> dict[str, object]:
    """Each approach's accuracy matrix, a row from each task checkpoint, evaluated in this process (one of the
    ranks, or the only process), and this rank's share of the first test set's batches."""
    from cl.run.distributed import rank_block
    from cl.run.supervised import build
    from data.device_stream import DeviceStream

    out: dict[str, object] = {}
    for name, run_dir in run_dirs.items():
        stream, approach = build(compose_config(_overrides(name), run_dir))
        data = DeviceStream(stream, "cpu", shared_head=not approach.net.multi_head)
        out[name] = []
        for t in range(len(stream)):
            checkpoint = torch.load(f"{run_dir}/checkpoints/task_{t}.ckpt", weights_only=False)
            approach.load_state_dict(checkpoint["state_dict"])
            approach.task_id = t
            out[name].append([approach.accuracy(data.source(j, "test")) for j in range(len(stream))])
    out["share"] = rank_block(-(-len(data.source(0, "test").y) // 16))
    return out


@pytest.mark.slow
def test_two_ranks_give_the_accuracy_matrix_of_one_process(tmp_path):
    run_dirs = {name: str(tmp_path / name) for name in APPROACHES}
    for name in APPROACHES:
        run_pipeline(_overrides(name), tmp_path / name)
    one = _matrices(run_dirs)
    assert one.pop("share") == slice(0, 6)  # 87 test samples: 6 batches of 16, all in one process
    two = on_two_ranks(functools.partial(_matrices, run_dirs), timeout=240)
    assert [two[rank].pop("share") for rank in (0, 1)] == [slice(0, 3), slice(3, 6)]
    for rank in (0, 1):
        assert two[rank] == one, rank  # exactly: the same counts, divided alike
