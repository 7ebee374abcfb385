"""ER's training throughput in the pipeline against a plain PyTorch loop doing the same steps, at batch 10: GEM's
permuted-MNIST protocol (20 tasks × 1000 samples, one epoch, MLP 784-100-100-10, shared head), 256 memories per
task (ring), 10 replayed samples per step from the earlier tasks.

    python bench/replay_throughput.py [--tasks 20] [--repeats 3] [--data-dir ../shared/data]

The pipeline side is `python train.py approach=er` as a user runs it, in-process; its training time is the sum over
tasks of each task's `Trainer.fit` training loop (results.json `time_s.train`; evaluation and start-up are not
training). The plain loop runs the same optimizer steps on the same device-resident tensors, with the memory as two
plain tensors and the same sampling. Runs alternate and the best of `repeats` is kept for each."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import publish  # noqa: E402
from cl.run.supervised import build  # noqa: E402
from data.device_stream import DeviceStream  # noqa: E402
from tests.conftest import SHARED_DATA, compose_config, run_pipeline  # noqa: E402

BATCH, MEMORIES, REPLAY = 10, 256, 10
GOAL = 0.7


def overrides(tasks: int, data_dir: str) -> list[str]:
    return ["experiment=gem_single_pmnist", "approach=er", f"stream.n_tasks={tasks}", f"paths.data_dir={data_dir}",
            "approach.lr=0.03", f"approach.batch_size={BATCH}", f"approach.n_memories={MEMORIES}",
            f"approach.replay_batch_size={REPLAY}", "eval_max_samples=1000", "logger=[]"]


def plain_loop(tasks: int, data_dir: str) -> float:
    """ER as a plain loop: per task a seeded shuffle, then per batch: CE(batch) + CE(replay), SGD, ring insert."""
    cfg = compose_config(overrides(tasks, data_dir), Path(tempfile.mkdtemp()))
    torch.manual_seed(0)
    stream, approach = build(cfg)
    net = approach.net
    data = DeviceStream(stream, "cpu", shared_head=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.03)
    mem_x = torch.zeros(tasks, MEMORIES, *stream.input_shape)
    mem_y = torch.zeros(tasks, MEMORIES, dtype=torch.long)
    seconds = 0.0
    for t in range(tasks):
        source = data.source(t, "train")
        t0 = time.perf_counter()
        order = torch.randperm(len(source.y), generator=torch.Generator().manual_seed(t))
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            x, y = source.transform(source.x[idx]), source.y[idx]
            loss = F.cross_entropy(net(x, 0), y)
            if t > 0:
                pick = torch.randperm(t * MEMORIES)[:REPLAY]
                loss = loss + F.cross_entropy(net(mem_x.view(-1, *stream.input_shape)[pick], 0), mem_y.view(-1)[pick])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            slots = torch.arange(start, start + len(y)) % MEMORIES
            mem_x[t, slots], mem_y[t, slots] = x, y
        seconds += time.perf_counter() - t0
    return seconds


def pipeline(tasks: int, data_dir: str) -> float:
    results = run_pipeline(overrides(tasks, data_dir), Path(tempfile.mkdtemp()))
    return sum(results["time_s"]["train"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-dir", default=str(SHARED_DATA))
    args = p.parse_args()
    n = args.tasks * 1000
    best = {"plain": float("inf"), "pipeline": float("inf")}
    for r in range(args.repeats):
        for name, fn in (("plain", plain_loop), ("pipeline", pipeline)):
            seconds = fn(args.tasks, args.data_dir)
            best[name] = min(best[name], seconds)
            print(f"repeat {r + 1}: {name:<8} {n / seconds:8.0f} samples/s ({seconds:.2f} s)", flush=True)
    ratio = best["plain"] / best["pipeline"]
    verdict = "met" if ratio >= GOAL else "not met"
    publish(p, args, "replay_throughput", f"""## Online replay (ER, batch 10) vs a plain PyTorch loop

ER on GEM's permuted MNIST: {args.tasks} tasks × 1000 samples, batch {BATCH}, one epoch, MLP 784-100-100-10 (shared
head), {MEMORIES} memories per task, {REPLAY} replayed samples per step; training time only, best of {args.repeats}
alternating runs.

| loop | samples/s | training s |
|---|---|---|
| plain PyTorch | {n / best['plain']:.0f} | {best['plain']:.2f} |
| pipeline (`train.py approach=er`) | {n / best['pipeline']:.0f} | {best['pipeline']:.2f} |
| **ratio pipeline / plain** | **{ratio:.3f}** (goal ≥ {GOAL}: {verdict}) | |
""")


if __name__ == "__main__":
    main()
