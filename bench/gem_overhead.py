"""The per-task cost of a long stream of short tasks: `python train.py experiment=gem_single_pmnist` (GEM's
`--model single` protocol: 20 permuted-MNIST tasks of 1000 samples, batch 10, one epoch, every test set evaluated
after every task), run as a user runs it, in a fresh process, with its wall-clock time split into start-up,
training, evaluation, task-end work and checkpoint/log I/O.

    python bench/gem_overhead.py [--repeats 3] [--data-dir ../shared/data]

Start-up is everything before the first task trains: imports, config, the stream, the model and the
random-initialisation row of evaluations. The best of `repeats` runs is reported (this machine is shared)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import publish  # noqa: E402
from cl.outputs.results import read_results  # noqa: E402

GOAL_S = 35.0


def one_run(data_dir: str, run_dir: Path, experiment: str = "gem_single_pmnist") -> dict:
    """`python train.py experiment=<experiment>` in a fresh process: its wall-clock time split into parts."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"experiment={experiment}",
                           f"hydra.run.dir={run_dir}"], cwd=ROOT, env={**os.environ, "CL_DATA_DIR": data_dir},
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"train.py failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    results = read_results(run_dir)
    t = results["time_s"]
    parts = {"train": sum(t["train"]), "eval": sum(t["eval"]), "task end": sum(t["task_end"]), "io": sum(t["io"])}
    parts["start-up"] = wall - t["total"] + t["setup"]
    parts["other (per-task Trainer, fit set-up)"] = wall - sum(parts.values())
    return {"wall": wall, "parts": parts, "acc": results["metrics"]["acc"], "load": os.getloadavg()[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("CL_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            runs.append(one_run(args.data_dir, Path(tmp) / f"run{r}"))
            print(f"run {r + 1}: {runs[-1]['wall']:.1f} s wall", flush=True)
    best = min(runs, key=lambda run: run["wall"])
    rows = "\n".join(f"| {name} | {seconds:.1f} |" for name, seconds in best["parts"].items())
    markdown = f"""## Short tasks: GEM's single-model protocol on permuted MNIST

`python train.py experiment=gem_single_pmnist`: 20 tasks × 1000 samples, batch 10, one epoch, all 20 test sets
(10,000 images each) evaluated after every task and at random initialisation (420 evaluations). Best of
{args.repeats} fresh processes (walls: {', '.join(f"{run['wall']:.1f}" for run in runs)} s).

| part | seconds |
|---|---|
{rows}
| **wall-clock** | **{best['wall']:.1f}** (goal ≤ {GOAL_S:.0f}: {'met' if best['wall'] <= GOAL_S else '**not met**'}) |

ACC {100 * best['acc']:.2f} %. 1-minute load average after the best run: {best['load']:.1f}."""
    publish(parser, args, "gem_overhead", markdown)


if __name__ == "__main__":
    main()
