"""End to end through train.py: 2 CPU DDP processes with batch b each give the state of 1 process with batch 2b on the
same data — BLIP's bits and the regularizers' importances (EWC, MAS, SI); replay memories: tests/test_replay_ddp.py,
as their slots hold the gathered samples in rank order. Each rank takes every other sample of the same shuffled
order, so the ranks' averaged gradient is the 1-process gradient of their union; what differs is only the order of
float sums."""
import pytest
import torch

from tests.conftest import run_cli

# 2 tasks of 192 training samples each (whole batches for both set-ups), 3 epochs, a narrow MLP
COMMON = ["stream.tasks=[[0,1],[2,3]]", "stream.use=192", "trainer.max_epochs=3", "model.trunk.hidden_sizes=[64]",
          "logger=[]", "seed=4"]
APPROACHES = ["blip", "ewc", "mas", "si"]
BATCH = 32  # per rank; one process takes both ranks' share at once


def final_state(approach: str, processes: int, run_dir) -> dict[str, torch.Tensor]:
    trainer = (["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={processes}"] if processes > 1
               else ["trainer=cpu"])
    done = run_cli([f"approach={approach}", *COMMON, *trainer, f"approach.batch_size={BATCH * 2 // processes}",
                    f"hydra.run.dir={run_dir}"])
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(run_dir / "checkpoints" / "task_1.ckpt", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if not k.startswith("net.")}  # the approach's own state


@pytest.mark.slow
@pytest.mark.parametrize("approach", APPROACHES)
def test_two_processes_keep_the_state_of_one(approach, tmp_path):
    one = final_state(approach, 1, tmp_path / "one")
    two = final_state(approach, 2, tmp_path / "two")
    assert one.keys() == two.keys() and one
    for key, value in one.items():
        other = two[key]
        if key.endswith(".bits"):  # a bit flips only where the information gain sits on an integer
            assert (value == other).float().mean() > 0.999, key
        elif value.is_floating_point():
            assert torch.allclose(value, other, rtol=1e-3, atol=1e-6), key
        else:
            assert torch.equal(value, other), key
