"""Evaluation time of one process against DDP ranks that share it: after each task every rank scores its block of
each test set's batches and the correct counts are all-reduced (cl/approaches/base.py `accuracy`).

    python bench/ddp_eval.py [--tasks 10] [--processes 2] [--threads 1] [--accelerator cpu] [--data-dir ../shared/data]

Each run is `python train.py stream=pmnist approach=sgd` as a user runs it, its training cut to a few batches per
task (`trainer.limit_train_batches`), as evaluation is what is timed: results.json's `time_s.eval`, the time of
one row of the accuracy matrix (every task's whole test split, 10,000 images each), averaged over the tasks (the
random-initialisation row, evaluated before DDP starts, is not in it). One process runs with `--threads` torch
threads, each of the `--processes` ranks with as many: where the machine has the cores, the ranks' time is about
1 / processes of one process's.

On a GPU machine (one rank per GPU, nccl):

    python bench/ddp_eval.py --accelerator gpu --processes 2 --threads 4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ddp_throughput import ddp_run  # noqa: E402
from bench.report import publish  # noqa: E402
from tests.conftest import SHARED_DATA  # noqa: E402


def run(args: argparse.Namespace, devices: int) -> dict:
    return ddp_run(["stream=pmnist", f"stream.n_tasks={args.tasks}", "approach=sgd", "trainer.max_epochs=1",
                    f"+trainer.limit_train_batches={args.train_batches}", f"model.trunk.hidden_sizes=[{args.hidden}]"],
                   devices, args.accelerator, args.threads, args.data_dir.resolve())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the one process and of each rank")
    p.add_argument("--hidden", default="2000,2000", help="the MLP's hidden layers (evaluation's compute)")
    p.add_argument("--train-batches", type=int, default=5, help="training batches per task")
    p.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    args = p.parse_args()
    one, many = run(args, 1), run(args, args.processes)
    per_task = [sum(r["time_s"]["eval"]) / len(r["time_s"]["eval"]) for r in (one, many)]
    unit = "CPU processes (gloo)" if args.accelerator == "cpu" else "GPUs (nccl)"
    each = f"{args.threads} torch thread{'s' if args.threads > 1 else ''}"
    publish(p, args, "ddp_eval", f"""## DDP evaluation: 1 vs {args.processes} {unit}

Permuted MNIST ({args.tasks} tasks, 10,000 test images each), MLP {args.hidden.replace(',', '-')}, evaluation
batches of 1000; after each task every rank scores its block of each test set's batches and the counts are
all-reduced. One process and each rank with {each}. Time of one row of the accuracy matrix (`time_s.eval`, mean
over the tasks):

| | 1 process | {args.processes} processes |
|---|---|---|
| evaluation per task (s) | {per_task[0]:.3f} | {per_task[1]:.3f} |
| ratio | 1 | {per_task[1] / per_task[0]:.2f} |
""")


if __name__ == "__main__":
    main()
