"""Training throughput of the pipeline (Lightning Trainer + approach + device-side batches) against a plain
PyTorch loop on the same MLP (784-1200, 2-way head) and the same in-memory MNIST tensors, side by side.

    python bench/pipeline_throughput.py [--epochs 5] [--repeats 3] [--data-dir ../shared/data]

Both run the same number of SGD steps (batch 64) over task 1 of split MNIST; runs alternate and the best of
`repeats` is kept for each, so machine noise hits both alike. The pipeline time is the whole `Trainer.fit`
(setup included), with its progress bar on, as users run it."""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import publish  # noqa: E402
from cl.approaches.baselines.sgd import SGD  # noqa: E402
from cl.models.mlp import MLP
from cl.models.network import TaskNetwork  # noqa: E402
from cl.callbacks.progress import TaskProgressBar  # noqa: E402
from data.device_stream import DeviceStream  # noqa: E402
from data.streams import split_mnist  # noqa: E402
from data.tensor_loader import TaskBatches  # noqa: E402

BATCH, LR = 64, 0.01


def plain_loop(net, source, epochs: int) -> float:
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    x_all, y_all = source.x, source.y
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(y_all), generator=g)
        for start in range(0, len(perm), BATCH):
            idx = perm[start:start + BATCH]
            x = source.transform(x_all[idx])
            loss = F.cross_entropy(net(x, 0), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def pipeline(net, source, epochs: int) -> float:
    import pytorch_lightning as pl

    approach = SGD(net, lr=LR, batch_size=BATCH)
    approach.n_tasks = 1
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[TaskProgressBar(refresh_rate=10)])
    batches = TaskBatches([source], BATCH, shuffle=True, seed=0)
    t0 = time.perf_counter()
    trainer.fit(approach, batches)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = p.parse_args()

    stream = split_mnist(args.data_dir, valid_from_train=True, download=False)
    source = DeviceStream(stream, "cpu", shared_head=False).source(0, "train")
    torch.manual_seed(0)
    net0 = TaskNetwork(MLP, stream.input_shape, [t.n_classes for t in stream.tasks])
    n = len(source.y) * args.epochs
    best = {"plain": float("inf"), "pipeline": float("inf")}
    for r in range(args.repeats):
        for name, fn in (("plain", plain_loop), ("pipeline", pipeline)):
            seconds = fn(copy.deepcopy(net0), source, args.epochs)
            best[name] = min(best[name], seconds)
            print(f"repeat {r + 1}: {name:<8} {n / seconds:10.0f} samples/s ({seconds:.2f} s)", flush=True)
    ratio = best["plain"] / best["pipeline"]
    plain_sps, pipe_sps = n / best["plain"], n / best["pipeline"]
    print(f"\nplain loop {plain_sps:.0f} samples/s, pipeline {pipe_sps:.0f} samples/s, "
          f"ratio {ratio:.3f} (goal >= 0.75)")
    publish(p, args, "pipeline_throughput", f"""## Pipeline training throughput vs a plain PyTorch loop

MLP 784-1200 with a 2-way head, split MNIST task 1 ({len(source.y)} samples) served by `DeviceStream` (normalized once, in memory),
batch {BATCH}, SGD lr {LR}, {args.epochs} epochs per run, best of {args.repeats} alternating runs.

| loop | samples/s |
|---|---|
| plain PyTorch | {plain_sps:.0f} |
| pipeline (`Trainer.fit`, progress bar on) | {pipe_sps:.0f} |
| **ratio pipeline / plain** | **{ratio:.3f}** (goal ≥ 0.75) |
""")


if __name__ == "__main__":
    main()
