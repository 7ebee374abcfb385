"""Whole online recipes as users run them, `python train.py experiment=<name>` in a fresh process, on real MNIST:
GEM on GEM's permuted MNIST (`gem_pmnist`: 20 tasks × 1000 samples, batch 10, one epoch, 256 memories per task) and
BCL-Dual with BCL's run.sh settings on the 17 -cl tasks (`bcl_dual_pmnist`), with their wall-clock split into parts.

    python bench/online_recipes.py [--repeats 1] [--data-dir ../shared/data]

The best of `repeats` runs is reported for each (this machine is shared)."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gem_overhead import one_run  # noqa: E402
from bench.report import publish  # noqa: E402

GOALS_S = {"gem_pmnist": 180.0, "bcl_dual_pmnist": 300.0}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("CL_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    best = {}
    with tempfile.TemporaryDirectory() as tmp:
        for experiment in GOALS_S:
            runs = [one_run(args.data_dir, Path(tmp) / f"{experiment}{r}", experiment) for r in range(args.repeats)]
            best[experiment] = min(runs, key=lambda run: run["wall"])
            print(f"{experiment}: {best[experiment]['wall']:.1f} s wall", flush=True)
    parts = list(next(iter(best.values()))["parts"])
    rows = [f"| {part} | " + " | ".join(f"{run['parts'][part]:.1f}" for run in best.values()) + " |" for part in parts]
    walls = " | ".join(f"**{run['wall']:.1f}** (goal ≤ {GOALS_S[e]:.0f}: {'met' if run['wall'] <= GOALS_S[e] else '**not met**'})"
                       for e, run in best.items())
    publish(parser, args, "online_recipes", f"""## Online recipes: GEM and BCL-Dual on permuted MNIST, whole runs

`python train.py experiment=<recipe>` in a fresh process, best of {args.repeats}; every test set (10,000 images
each) evaluated after every task and at random initialisation.

| seconds | {' | '.join(f'`{e}`' for e in best)} |
|---|{'---|' * len(best)}
""" + "\n".join(rows) + f"""
| **wall-clock** | {walls} |
| ACC % | {' | '.join(f"{100 * run['acc']:.2f}" for run in best.values())} |
""")


if __name__ == "__main__":
    main()
