"""Training throughput of one process against DDP over processes on this machine's CPUs (gloo), per approach family.

    python bench/ddp_throughput.py [--approaches sgd,blip,ewc,si,er] [--processes 2] [--data-dir ../shared/data]

Each run is `python train.py stream=mnist5 approach=<a> trainer.max_epochs=2` as a user runs it: one process with
all the cores as torch threads, then `trainer=ddp trainer.accelerator=cpu trainer.devices=<processes>` with the
cores split among the ranks. Throughput = training samples ÷ results.json's training time (`time_s.train`, summed
over the tasks; start-up, task ends and evaluation apart). On a GPU machine the same script with
`--accelerator gpu` compares one GPU against all of them."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import publish  # noqa: E402
from cl.outputs.results import read_results  # noqa: E402
from tests.conftest import SHARED_DATA  # noqa: E402

EPOCHS = 2


def ddp_run(overrides: list[str], devices: int, accelerator: str, threads: int, data_dir: Path) -> dict:
    """`python train.py <overrides>` on `devices` processes (DDP when more than one) with `threads` torch threads
    each, as a user runs it; its results.json."""
    trainer = ["trainer=cpu"] if devices == 1 and accelerator == "cpu" else \
        ["trainer=ddp" if devices > 1 else "trainer=gpu", f"trainer.accelerator={accelerator}", f"trainer.devices={devices}"]
    run_dir = Path(tempfile.mkdtemp())
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CL_THREADS_PER_JOB": str(threads)}
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, *trainer, "logger=[]", f"paths.data_dir={data_dir}",
           f"hydra.run.dir={run_dir}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(overrides)} on {devices} device(s) failed:\n{done.stderr[-2000:]}")
    return read_results(run_dir)


def train(approach: str, devices: int, accelerator: str, data_dir: Path) -> dict:
    cores = os.cpu_count() or 1
    threads = max(1, cores // devices) if accelerator == "cpu" else 1
    return ddp_run(["stream=mnist5", f"approach={approach}", f"trainer.max_epochs={EPOCHS}"], devices, accelerator,
                   threads, data_dir)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--approaches", default="sgd,blip,ewc,si,er")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    args = p.parse_args()
    rows = []
    for approach in args.approaches.split(","):
        one = train(approach, 1, args.accelerator, args.data_dir.resolve())
        many = train(approach, args.processes, args.accelerator, args.data_dir.resolve())
        samples = EPOCHS * 60_000 * 0.9  # mnist5's training splits (10 % held out for validation), every epoch
        rate = [samples / sum(r["time_s"]["train"]) for r in (one, many)]
        rows.append(f"| {approach} | {rate[0]:.0f} | {rate[1]:.0f} | {rate[1] / rate[0]:.2f} | "
                    f"{100 * one['metrics']['acc']:.2f} | {100 * many['metrics']['acc']:.2f} |")
        print(rows[-1], flush=True)
    unit = "CPU processes (gloo)" if args.accelerator == "cpu" else "GPUs (nccl)"
    publish(p, args, "ddp_throughput", f"""## DDP: 1 vs {args.processes} {unit}

Split MNIST (mnist5, 5 tasks), {EPOCHS} epochs per task, batch 64 (each rank takes 64: DDP's global batch is
{args.processes}× larger), MLP; training samples per second over the whole stream (`time_s.train`). On CPU one
process uses every core as torch threads; the {args.processes} ranks split them.

| approach | 1 process samples/s | {args.processes} processes samples/s | speed-up | ACC 1 (%) | ACC {args.processes} (%) |
|---|---|---|---|---|---|
{chr(10).join(rows)}
""")


if __name__ == "__main__":
    main()
