"""What the regularization approaches cost on top of plain fine-tuning, on CPU (MLP 784-1200, split MNIST).

    python bench/regularizer_overhead.py [--repeats 3] [--data-dir ../shared/data]

1. Task-end importance of 8,000 training samples (EWC's exact Fisher, MAS's Ω), best of `repeats`.
2. Epoch time ÷ sgd's epoch time in task 2, where every penalty is active: each approach (its conf/approach/*.yaml
   defaults, batch 64, lr 0.01) trains task 1 for one epoch, then three epochs of task 2, each timed from
   on_train_epoch_start to on_train_epoch_end (the shortest of the three counts). Within a repeat sgd runs before
   and after every approach (sgd, ewc, sgd, online_ewc, sgd, ...), and an approach's ratio is to the mean of its two
   neighbouring sgd runs, so that the two times compared lie seconds apart; then the median over the repeats (robust
   to a noisy machine). LwF's warm-up epoch is set to 0 here so that the timed epoch trains the whole network with
   distillation (its steady state).
3. CL-state bytes after each of the 5 tasks of split MNIST through the real pipeline (`memory.cl_state_bytes` of
   results.json; 5 batches per task: the state does not depend on how long a task trains).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from pytorch_lightning import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import publish  # noqa: E402
from data.device_stream import DeviceStream  # noqa: E402
from cl.callbacks.timing import TaskTimer  # noqa: E402
from data.streams import split_mnist  # noqa: E402
from data.tensor_loader import TaskBatches  # noqa: E402
from tests.conftest import compose_config, run_pipeline  # noqa: E402

GOALS = {"ewc": 1.2, "online_ewc": 1.2, "si": 1.2, "mas": 1.2, "imm_mean": 1.2, "imm_mode": 1.2, "hat": 1.5,
         "lwf": 1.5}
EXTRA = {"ewc": ["approach.fisher_samples=8000"], "online_ewc": ["approach.fisher_samples=8000"],
         "imm_mode": ["approach.fisher_samples=8000"], "mas": ["approach.omega_samples=8000"],
         "lwf": ["approach.warmup_epochs=0"]}
STATE_APPROACHES = ("ewc", "online_ewc", "si", "mas")
TIMED_EPOCHS = 3  # of task 2; the shortest counts


class EpochTimer(Callback):
    """The shortest of the fit's epochs."""

    def __init__(self):
        self.seconds = float("inf")

    def on_train_epoch_start(self, trainer, pl_module):
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds = min(self.seconds, time.perf_counter() - self.t0)


def build(name: str, data: DeviceStream, root: Path):
    cfg = compose_config([f"approach={name}", "stream=mnist5", "approach.batch_size=64", "approach.lr=0.01",
                          *EXTRA.get(name, [])], root)
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model, input_shape=data.stream.input_shape,
                                  task_classes=[t.n_classes for t in data.stream.tasks])
    approach = hydra.utils.instantiate(cfg.approach, net=net)
    approach.setup_stream(data.stream)
    return approach


def fit(approach, data: DeviceStream, t: int, callbacks: list, root: Path, epochs: int = 1):
    approach.task_id = t
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, limit_val_batches=0, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=callbacks, default_root_dir=str(root))
    trainer.fit(approach, TaskBatches(approach.train_sources(data, t), 64, shuffle=True, seed=t))


def two_tasks(name: str, data: DeviceStream, root: Path) -> tuple[float, float]:
    """(task-end seconds after task 1, epoch seconds of task 2)."""
    approach = build(name, data, root)
    timer, epoch = TaskTimer(), EpochTimer()
    fit(approach, data, 0, [timer], root)
    fit(approach, data, 1, [epoch], root, epochs=TIMED_EPOCHS)
    return timer.task_end_seconds, epoch.seconds


def state_bytes(name: str, data_dir: str, root: Path) -> list[int]:
    results = run_pipeline([f"approach={name}", "stream=mnist5", f"paths.data_dir={data_dir}", "trainer.max_epochs=1",
                            "+trainer.limit_train_batches=5", "stream.pc_valid=0", "callbacks=default",
                            *EXTRA.get(name, [])], root / f"state_{name}")
    return results["memory"]["cl_state_bytes"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("CL_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    stream = split_mnist(args.data_dir, download=False)
    data = DeviceStream(stream, "cpu", shared_head=False)
    names = ["sgd", *GOALS]
    task_end = {n: float("inf") for n in names}
    epochs: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in GOALS}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        two_tasks("sgd", data, root)  # warm-up
        for r in range(args.repeats):
            sgd_before = two_tasks("sgd", data, root)[1]
            epochs["sgd"].append(sgd_before)
            for name in GOALS:
                end, seconds = two_tasks(name, data, root)
                sgd_after = two_tasks("sgd", data, root)[1]
                task_end[name] = min(task_end[name], end)
                epochs[name].append(seconds)
                epochs["sgd"].append(sgd_after)
                ratios[name].append(seconds / ((sgd_before + sgd_after) / 2))
                sgd_before = sgd_after
            print(f"repeat {r + 1}: " + ", ".join(f"{n} {ratios[n][-1]:.3f}" for n in GOALS), flush=True)
        states = {name: state_bytes(name, args.data_dir, root) for name in STATE_APPROACHES}

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = ["| approach | task-end importance, 8,000 samples (s) | goal |", "|---|---|---|"]
    for name in ("ewc", "mas"):
        lines.append(f"| {name} | {task_end[name]:.2f} | ≤ 1 ({verdict(task_end[name] <= 1)}) |")
    sgd = statistics.median(epochs["sgd"])
    lines += ["", f"| approach | epoch time in task 2 ÷ its neighbouring sgd runs' (median of the repeats' ratios; "
                  f"sgd: {sgd:.2f} s) | spread of the ratios | goal |", "|---|---|---|---|"]
    for name, goal in GOALS.items():
        ratio = statistics.median(ratios[name])
        lines.append(f"| {name} | {ratio:.3f} ({statistics.median(epochs[name]):.2f} s) | {min(ratios[name]):.2f} – "
                     f"{max(ratios[name]):.2f} | ≤ {goal} ({verdict(ratio <= goal)}) |")
    lines += ["", "| approach | CL-state bytes after tasks 1 … 5 | growth |", "|---|---|---|"]
    for name, values in states.items():
        growth = "constant" if len(set(values)) == 1 else f"× {values[-1] / values[0]:.2f} from task 1 to 5"
        lines.append(f"| {name} | {' → '.join(f'{v:,}' for v in values)} | {growth} |")
    lines.append("")
    lines.append(f"MLP 784-1200 with a 2-way head per task, split MNIST (task 2: {len(stream.tasks[1].train)} "
                 f"training images), batch 64, lr 0.01; per run the shortest of {TIMED_EPOCHS} task-2 epochs; "
                 f"{args.repeats} repeats, sgd run between every two approaches. 1-minute load average at the end: "
                 f"{os.getloadavg()[0]:.1f}.")
    publish(parser, args, "regularizer_overhead", "## Regularization approaches: overhead and state\n\n"
            + "\n".join(lines))


if __name__ == "__main__":
    main()
