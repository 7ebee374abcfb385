"""BLIP's training overhead and state size.

    python bench/blip_overhead.py [--part epoch|pmnist|both] [--repeats 7] [--pmnist-tasks 10]
                                  [--pmnist-train-batches N] [--data-dir ../shared/data]

1. Epoch time of BLIP ÷ SGD: the same MLP 784-1200 (BLIP init for both), split-MNIST task 1, batch 64, lr 0.01,
   one `Trainer.fit` epoch each (validation off), alternating, best of `repeats`; the epoch is timed from
   on_train_epoch_start to on_train_epoch_end, so BLIP's task-end Fisher is not in it (it is reported apart).
2. Shortened PMNIST protocol through the real pipeline: `experiment=blip_pmnist trainer.max_epochs=1
   callbacks=default` (10 tasks, one epoch each, no patience schedule), then the CL-state bytes per network
   parameter and per quantized parameter after task 10 and the training time of task 10 ÷ task 1
   (`--pmnist-train-batches N` caps each task's epoch at N batches, for a busy machine).
Each part writes its own section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import publish  # noqa: E402
from cl.approaches.isolation.blip import BLIP  # noqa: E402
from cl.approaches.baselines.sgd import SGD  # noqa: E402
from cl.models.mlp import MLP
from cl.models.network import TaskNetwork  # noqa: E402
from data.device_stream import DeviceStream  # noqa: E402
from data.streams import split_mnist  # noqa: E402
from data.tensor_loader import TaskBatches  # noqa: E402


class EpochTimer(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.t0


def epoch_seconds(kind: str, data: DeviceStream, root: str, batches: int | None) -> tuple[float, float]:
    """(epoch seconds, task-end seconds) of one epoch of `kind` on task 1."""
    torch.manual_seed(0)
    net = TaskNetwork(lambda input_shape: MLP(input_shape, (1200,)), data.stream.input_shape, [2] * len(data.stream))
    approach = (BLIP if kind == "blip" else SGD)(net, lr=0.01, batch_size=64)
    if kind == "sgd":  # the same starting weights as BLIP's
        BLIP(net)
    approach.setup_stream(data.stream)
    timer = EpochTimer()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[timer], default_root_dir=root)
    batches = TaskBatches(approach.train_sources(data, 0), 64, shuffle=True, seed=0)
    t0 = time.perf_counter()
    trainer.fit(approach, batches)
    return timer.seconds, time.perf_counter() - t0 - timer.seconds


def pmnist_run(data_dir: str, n_tasks: int, run_dir: Path, extra: list[str]) -> dict:
    from tests.conftest import run_pipeline

    os.environ["CL_DATA_DIR"] = data_dir
    return run_pipeline(["experiment=blip_pmnist", "trainer.max_epochs=1", "callbacks=default",
                         f"stream.n_tasks={n_tasks}", *extra], run_dir)


def epoch_ratio_section(data_dir: str, repeats: int, batches: int | None) -> str:
    stream = split_mnist(data_dir, download=False)
    data = DeviceStream(stream, "cpu", shared_head=False)
    best = {"sgd": float("inf"), "blip": float("inf")}
    task_end = float("inf")
    with tempfile.TemporaryDirectory() as root:
        epoch_seconds("sgd", data, root, batches)  # warm-up
        for _ in range(repeats):
            for kind in ("sgd", "blip"):
                seconds, end = epoch_seconds(kind, data, root, batches)
                best[kind] = min(best[kind], seconds)
                if kind == "blip":
                    task_end = min(task_end, end)
    ratio = best["blip"] / best["sgd"]
    cap = f", epoch capped at {batches} batches" if batches else ""
    return "\n".join([
        "| measure | value | goal |",
        "|---|---|---|",
        f"| epoch time BLIP ÷ SGD (MLP 784-1200, MNIST task 1, batch 64{cap}; best of {repeats}, alternating) | "
        f"{ratio:.3f} ({best['blip']:.2f} s / {best['sgd']:.2f} s) | ≤ 1.15 |",
        f"| BLIP task end: Fisher (8,000 samples) + bits + re-quantization | {task_end:.2f} s | – |",
    ])


def pmnist_section(data_dir: str, n_tasks: int, train_batches: int | None) -> str:
    extra = [f"+trainer.limit_train_batches={train_batches}"] if train_batches else []
    with tempfile.TemporaryDirectory() as root:
        results = pmnist_run(data_dir, n_tasks, Path(root) / "pmnist", extra)
    params = results["memory"]["params"]
    quantized = 784 * 1200 + 1200
    state = results["memory"]["cl_state_bytes"]
    train = results["time_s"]["train"]
    T = len(train)
    protocol = (f"`experiment=blip_pmnist trainer.max_epochs=1 callbacks=default {' '.join(extra)}`".replace(" `", "`")
                + f" ({T} tasks, 1 epoch per task" + (f" capped at {train_batches} batches" if train_batches else "")
                + ", no patience schedule)")
    return "\n".join([
        "| measure | value | goal |",
        "|---|---|---|",
        f"| CL-state bytes per quantized trunk parameter after {T} PMNIST tasks | {state[-1] / quantized:.2f} "
        f"(per network parameter: {state[-1] / params:.2f}) | ≤ 9 |",
        f"| CL-state bytes after task 1 → task {T} | {state[0]:,} → {state[-1]:,} | constant |",
        f"| training time task {T} ÷ task 1 | {train[-1] / train[0]:.3f} ({train[-1]:.1f} s / {train[0]:.1f} s) "
        f"| ≤ 1.1 |",
        f"| capacity used after task {T} | {100 * results['approach_info']['capacity']:.1f} % | – |",
        "",
        f"Shortened PMNIST protocol: {protocol}: ACC {100 * results['metrics']['acc']:.2f} %, "
        f"GEM-BWT {100 * results['metrics']['bwt']:+.2f} pp. The projection also keeps a transient per-task box "
        "(2 float32 per parameter) during training; it is derived from the state, freed at task end, not "
        "checkpointed, and not counted above.",
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("CL_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--part", choices=["epoch", "pmnist", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epoch-batches", type=int, default=None,
                        help="cap the timed epochs at N batches (more, shorter repeats on a busy machine)")
    parser.add_argument("--pmnist-tasks", type=int, default=10)
    parser.add_argument("--pmnist-train-batches", type=int, default=None,
                        help="cap the batches per task (default: the whole epoch)")
    args = parser.parse_args()
    if args.part in ("epoch", "both"):
        text = epoch_ratio_section(args.data_dir, args.repeats, args.epoch_batches)
        publish(parser, args, "blip_overhead_epoch", "## BLIP training overhead\n\n" + text)
    if args.part in ("pmnist", "both"):
        text = pmnist_section(args.data_dir, args.pmnist_tasks, args.pmnist_train_batches)
        publish(parser, args, "blip_overhead_pmnist", "## BLIP state size and per-task time on PMNIST\n\n" + text)


if __name__ == "__main__":
    main()
