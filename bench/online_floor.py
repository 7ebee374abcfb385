"""The online recipes at their real protocols against their floor, a plain PyTorch loop doing the same arithmetic
(no Lightning, no uint8 memory, the same batch shapes and memory sizes, torch.optim.SGD), side by side in one run:

- `experiment=bcl_dual_pmnist`: BCL's run.sh, every task 60,000 samples in batches of 10, each batch two rounds of
  one inner step (the batch + 128 replayed samples with their distillation) and one outer step (128 samples of the
  evaluation memories), with the code's gradient accumulation, memory start and Reptile interpolation. The first
  `--bcl-tasks` tasks of the 20 (from the third on, a step costs the same in every task);
- `experiment=gem_pmnist`: GEM's 20 tasks × 1,000 samples, batch 10; the plain loop is GEM's own step (one forward
  and backward per earlier task's memory, the dot products, quadprog when one is negative).

Each side runs in a fresh process (`python train.py experiment=<recipe> stream.n_tasks=...` for the pipeline, its
`time_s.train` per task), alternating, best of `--repeats` per task. Start-up (the seconds before the first task
trains) and evaluation (every test set after every task) are measured beside floors of their own: importing torch
and reading the MNIST files, and a plain `torch.no_grad` pass over the same test sets.

    python bench/online_floor.py [--bcl-tasks 4] [--repeats 2] [--data-dir ../shared/data]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import publish  # noqa: E402

GOAL = 0.9
BCL_TASKS = 23 - 3  # bcl_dual_pmnist: the 20 continual tasks are positions 4-23 of a 23-permutation draw


# --- the plain loops (run in a fresh process: `python bench/online_floor.py --plain <recipe> <tasks> <data dir>`) ---
def plain_setup(recipe: str, tasks: int, data_dir: str):
    """The recipe's stream and freshly initialized network, built by the pipeline's own config and builder (so the
    data, shapes and init are the recipe's), and the training tensors of each task as float inputs."""
    import torch

    from cl.run.supervised import build
    from data.device_stream import DeviceStream
    from tests.conftest import compose_config

    cfg = compose_config([f"experiment={recipe}", f"paths.data_dir={data_dir}", *n_tasks_override(recipe, tasks)],
                         Path(tempfile.mkdtemp()))
    torch.manual_seed(0)
    stream, approach = build(cfg)
    data = DeviceStream(stream, "cpu", shared_head=True)
    return cfg, approach.net, [data.source(t, "train") for t in range(len(stream))], \
        [data.source(t, "test") for t in range(len(stream))]


def n_tasks_override(recipe: str, tasks: int) -> list[str]:
    return [f"stream.n_tasks={tasks + 3}"] if recipe == "bcl_dual_pmnist" else [f"stream.n_tasks={tasks}"]


def plain_bcl_dual(cfg, net, train, test) -> list[float]:
    """BCL-Dual's observe as the code runs it (model/bcl_dual.py), on float memories: seconds per task."""
    import torch
    import torch.nn.functional as F

    a = cfg.approach
    per_task = a.n_memories - int(a.n_val * a.n_memories)
    n_val, T, batch = int(a.n_val * a.n_memories), len(train), a.batch_size
    shape = tuple(train[0].x.shape[1:])
    mem_x, mem_y = torch.zeros(T, per_task, *shape), torch.zeros(T, per_task, dtype=torch.long)
    soft = torch.zeros(T, per_task, 10)
    val_x, val_y = torch.zeros(T, n_val, *shape), torch.zeros(T, n_val, dtype=torch.long)
    opt = torch.optim.SGD(net.parameters(), lr=a.lr)
    params = list(net.parameters())

    def forward(x):
        return net(x, 0)

    def kl(logits, targets):
        log_q = F.log_softmax(logits / a.temperature, dim=1)
        return (torch.xlogy(targets, targets) - targets * log_q).sum() / targets.numel()

    seconds = []
    for t, source in enumerate(train):
        start_time = time.perf_counter()
        order = torch.randperm(len(source.y))
        val_pos = mem_pos = 0
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            x, y = source.transform(source.x[idx]), source.y[idx]
            held_x, held_y, x, y = x[0], y[0], x[1:], y[1:]
            if start == 0:  # the task's first batch fills both memories with copies
                val_x[t], val_y[t] = held_x, held_y
                mem_x[t], mem_y[t] = x[0], y[0]
            else:
                x, y = torch.cat([x, val_x[t, val_pos:val_pos + 1]]), torch.cat([y, val_y[t, val_pos:val_pos + 1]])
                val_x[t, val_pos], val_y[t, val_pos] = held_x, held_y
            val_pos = (val_pos + 1) % n_val
            slots = torch.arange(mem_pos, mem_pos + len(y)) % per_task
            mem_x[t, slots], mem_y[t, slots] = x, y
            mem_pos = (mem_pos + len(y)) % per_task
            opt.zero_grad()
            for _ in range(a.n_meta):
                before = [p.detach().clone() for p in params]
                for _ in range(a.inner_steps):
                    loss = F.cross_entropy(forward(x), y)
                    if t > 0:
                        pick = torch.randperm(t * per_task)[:min(per_task, a.replay_batch_size)]
                        logits = forward(mem_x[:t].flatten(0, 1)[pick])
                        loss = (loss + F.cross_entropy(logits, mem_y[:t].flatten()[pick])
                                + a.memory_strength * kl(logits, soft[:t].flatten(0, 1)[pick]))
                    loss.backward()
                    opt.step()
                pick = torch.randperm((t + 1) * n_val)[:min((t + 1) * n_val, a.replay_batch_size)]
                outer = F.cross_entropy(forward(val_x[:t + 1].flatten(0, 1)[pick]), val_y[:t + 1].flatten()[pick])
                outer.backward()
                opt.step()
                opt.zero_grad()
                with torch.no_grad():
                    now = [p.detach() for p in params]
                    torch._foreach_lerp_(before, now, a.beta)
                    torch._foreach_copy_(now, before)
        with torch.no_grad():
            soft[t] = F.softmax(forward(mem_x[t]) / a.temperature, dim=1)
        seconds.append(time.perf_counter() - start_time)
        print(f"plain bcl_dual task {t + 1}: {seconds[-1]:.1f} s", flush=True)
    return seconds


def plain_gem(cfg, net, train, test) -> list[float]:
    """GEM's observe (model/gem.py): ring memory per task, one forward and backward per earlier task's memory,
    the dot products with the batch's gradient, quadprog when any is negative. Seconds per task."""
    import numpy as np
    import quadprog
    import torch
    import torch.nn.functional as F

    a = cfg.approach
    T, M, batch = len(train), a.n_memories, a.batch_size
    shape = tuple(train[0].x.shape[1:])
    mem_x, mem_y = torch.zeros(T, M, *shape), torch.zeros(T, M, dtype=torch.long)
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=a.lr)
    grads = torch.zeros(T, sum(p.numel() for p in params))

    def flat_grad():
        return torch.cat([p.grad.reshape(-1) for p in params])

    seconds = []
    for t, source in enumerate(train):
        start_time = time.perf_counter()
        order = torch.randperm(len(source.y))
        position = 0
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            x, y = source.transform(source.x[idx]), source.y[idx]
            slots = torch.arange(position, position + len(y)) % M
            mem_x[t, slots], mem_y[t, slots] = x, y
            position = (position + len(y)) % M
            for u in range(t):
                opt.zero_grad()
                F.cross_entropy(net(mem_x[u], 0), mem_y[u]).backward()
                grads[u] = flat_grad()
            opt.zero_grad()
            F.cross_entropy(net(x, 0), y).backward()
            if t > 0:
                g = flat_grad()
                G = grads[:t]
                if bool((G @ g < 0).any()):
                    memories, gradient = G.double().numpy(), g.double().numpy()
                    P = memories @ memories.T
                    P = 0.5 * (P + P.T) + 1e-3 * np.eye(t)
                    v = quadprog.solve_qp(P, memories @ gradient * -1, np.eye(t), np.zeros(t) + a.memory_strength)[0]
                    new = torch.from_numpy(v @ memories + gradient).float()
                    offset = 0
                    for p in params:
                        p.grad.copy_(new[offset:offset + p.numel()].view_as(p))
                        offset += p.numel()
            opt.step()
        seconds.append(time.perf_counter() - start_time)
        print(f"plain gem task {t + 1}: {seconds[-1]:.1f} s", flush=True)
    return seconds


def plain_eval(net, test) -> float:
    """One evaluation row: every test set in batches of 1,000 under no_grad, argmax accuracy."""
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        for source in test:
            correct = 0
            for first in range(0, len(source.y), 1000):
                x = source.transform(source.x[first:first + 1000])
                correct += int((net(x, 0).argmax(1) == source.y[first:first + 1000]).sum())
    return time.perf_counter() - start


def plain_main(recipe: str, tasks: int, data_dir: str, out: str) -> None:
    t0 = time.perf_counter()
    cfg, net, train, test = plain_setup(recipe, tasks, data_dir)
    setup = time.perf_counter() - t0
    net.train()
    seconds = (plain_bcl_dual if recipe == "bcl_dual_pmnist" else plain_gem)(cfg, net, train, test)
    net.eval()
    Path(out).write_text(json.dumps({"train": seconds, "setup": setup, "eval_row": plain_eval(net, test)}))


# --- the driver ----------------------------------------------------------------------------------------------------
def run(command: list[str], data_dir: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env={**os.environ, "CL_DATA_DIR": data_dir}, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def pipeline(recipe: str, tasks: int, data_dir: str, tmp: Path) -> dict:
    from cl.outputs.results import read_results

    run_dir = tmp / f"{recipe}-{time.monotonic_ns()}"
    wall = run([sys.executable, "train.py", f"experiment={recipe}", *n_tasks_override(recipe, tasks), "logger=[]",
                f"hydra.run.dir={run_dir}"], data_dir)
    r = read_results(run_dir)["time_s"]
    # outside the tasks: the process's imports and config, the stream, the model and the random-initialisation row
    # (time_s.setup), and its closing (figures, loggers)
    return {"train": r["train"], "eval": sum(r["eval"]), "eval_rows": len(r["eval"]), "wall": wall,
            "startup": wall - r["total"] + r["setup"]}


def plain(recipe: str, tasks: int, data_dir: str, tmp: Path) -> dict:
    out = tmp / f"plain-{recipe}-{time.monotonic_ns()}.json"
    run([sys.executable, str(Path(__file__).resolve()), "--plain", recipe, str(tasks), data_dir, str(out)], data_dir)
    return json.loads(out.read_text())


def startup_floor(data_dir: str) -> float:
    """A fresh process that imports torch and reads the MNIST idx files: the least any run on MNIST starts with."""
    code = ("import torch, sys; sys.path.insert(0, %r); from data.mnist import load_mnist; load_mnist(%r, False)"
            % (str(ROOT), data_dir))
    return run([sys.executable, "-c", code], data_dir)


def best_per_task(runs: list[list[float]]) -> list[float]:
    return [min(column) for column in zip(*runs)]


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--plain":
        plain_main(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("CL_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--bcl-tasks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    plans = {"bcl_dual_pmnist": args.bcl_tasks, "gem_pmnist": 20}
    sides = {(recipe, side): [] for recipe in plans for side in ("pipeline", "plain")}
    floors = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            floors.append(startup_floor(args.data_dir))
            for recipe, tasks in plans.items():
                for side, fn in (("plain", plain), ("pipeline", pipeline)):
                    sides[recipe, side].append(fn(recipe, tasks, args.data_dir, Path(tmp)))
                    print(f"repeat {r + 1}: {recipe} {side}: {sum(sides[recipe, side][-1]['train']):.1f} s training",
                          flush=True)
    rows, notes = [], []
    for recipe, tasks in plans.items():
        ours = best_per_task([run["train"] for run in sides[recipe, "pipeline"]])
        floor = best_per_task([run["train"] for run in sides[recipe, "plain"]])
        # BCL: from the third task on a step costs the same in every task (full replay and outer batches)
        steady = slice(2, None) if recipe == "bcl_dual_pmnist" else slice(None)
        ratio = sum(floor[steady]) / sum(ours[steady])
        label = "s per task from task 3" if recipe == "bcl_dual_pmnist" else "s training, 20 tasks"
        per = (lambda v: sum(v[steady]) / len(v[steady])) if recipe == "bcl_dual_pmnist" else (lambda v: sum(v))
        rows.append(f"| `{recipe}` training ({label}) | {per(ours):.1f} | {per(floor):.1f} | **{ratio:.3f}** "
                    f"({'met' if ratio >= GOAL else '**not met**'}) |")
        pipe_runs, plain_runs = sides[recipe, "pipeline"], sides[recipe, "plain"]
        evals = min(run["eval"] / run["eval_rows"] for run in pipe_runs)
        eval_floor = min(run["eval_row"] for run in plain_runs)
        rows.append(f"| `{recipe}` evaluation (s per row of {tasks} test sets) | {evals:.2f} | {eval_floor:.2f} | "
                    f"{eval_floor / evals:.3f} |")
        startup = min(run["startup"] for run in pipe_runs)
        plain_startup = min(run["setup"] for run in plain_runs) + min(floors)
        rows.append(f"| `{recipe}` start-up and close (s outside the tasks) | {startup:.1f} | {min(floors):.1f} "
                    f"(+ {plain_startup - min(floors):.1f} building the stream) | {plain_startup / startup:.3f} |")
        notes.append(f"`{recipe}` per task, pipeline / plain (s): "
                     + ", ".join(f"{o:.1f}/{f:.1f}" for o, f in zip(ours, floor)))
    publish(parser, args, "online_floor", f"""## Online recipes at their real protocols vs a plain PyTorch loop

`experiment=bcl_dual_pmnist` (BCL's run.sh: 60,000 samples per task, batch 10; its first {args.bcl_tasks} tasks
here) and `experiment=gem_pmnist` (GEM: 20 tasks × 1,000 samples) as `python train.py` runs them, beside a plain
PyTorch loop of the same arithmetic in its own process (same data, init, batch shapes and memory sizes;
torch.optim.SGD; float memories), alternating, best of {args.repeats} per task. Start-up floor: a process that
imports torch and reads MNIST; evaluation floor: a plain no-grad pass over the same test sets.

| measure | pipeline | plain loop | plain ÷ pipeline (goal ≥ {GOAL} for training) |
|---|---|---|---|
""" + "\n".join(rows) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")


if __name__ == "__main__":
    main()
