"""BLIP on MNIST-5 with the full official protocol (`experiment=blip_mnist5`: up to 200 epochs per task, HAT
patience schedule, validation = training set), on this machine's CPU cores: ACC, BWT in both conventions,
wall-clock and peak RSS of the training process.

    python bench/blip_mnist5.py [--data-dir ../shared/data] [--out outputs/bench/blip_mnist5] [extra overrides]

Runs `python train.py experiment=blip_mnist5` in a subprocess (its output goes to <out>/train.log); the peak RSS
is the child's maximum resident set size (getrusage)."""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import publish  # noqa: E402
from cl.outputs.results import read_results  # noqa: E402

GOALS = {"acc": 99.65, "bwt": -0.05, "minutes": 14, "rss_gb": 0.8}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("CL_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "blip_mnist5")
    parser.add_argument("overrides", nargs="*", default=[], help="extra train.py overrides (a run with them is not "
                        "published)")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(ROOT / "train.py"), "experiment=blip_mnist5", f"hydra.run.dir={args.out}",
               *args.overrides]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(args.out / "train.log", "w") as log:
        proc = subprocess.run(command, cwd=ROOT, env={**os.environ, "CL_DATA_DIR": args.data_dir}, stdout=log,
                              stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()[0]
    if proc.returncode != 0:
        raise SystemExit(f"train.py failed (exit {proc.returncode}); see {args.out / 'train.log'}")
    rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9  # Linux reports KiB
    results = read_results(args.out)
    m = results["metrics"]
    acc, bwt, bwt_blip = 100 * m["acc"], 100 * m["bwt"], 100 * m["bwt_blip"]
    times = results["time_s"]
    epochs_note = f"{sum(times['train']):.0f} s training, {sum(times['task_end']):.1f} s task-end (Fisher + bits)"

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    row = " | ".join(f"{100 * a:.2f}" for a in results["acc_matrix"][-1])
    lines = [
        "| measure | value | goal |",
        "|---|---|---|",
        f"| ACC (%) | {acc:.2f} | ≥ {GOALS['acc']} ({verdict(acc >= GOALS['acc'])}) |",
        f"| BWT, GEM ÷(T−1) (pp) | {bwt:+.3f} | ≥ {GOALS['bwt']} ({verdict(bwt >= GOALS['bwt'])}) |",
        f"| BWT, BLIP code ÷T (pp) | {bwt_blip:+.3f} | – |",
        f"| wall-clock (min) | {wall / 60:.1f} | ≤ {GOALS['minutes']} ({verdict(wall / 60 <= GOALS['minutes'])}) |",
        f"| peak RSS (GB) | {rss_gb:.2f} | ≤ {GOALS['rss_gb']} ({verdict(rss_gb <= GOALS['rss_gb'])}) |",
        f"| capacity used after task 5 (%) | {100 * results['approach_info']['capacity']:.2f} | – |",
        "",
        f"Final accuracies per task (%): {row}. Time split: {epochs_note}.",
    ]
    if args.overrides:
        lines.append(f"Extra overrides: `{' '.join(args.overrides)}`.")
    lines.append(f"1-minute load average of the machine: {load_before:.1f} at the start, {load_after:.1f} at the end "
                 f"(wall-clock figures are only comparable at a load below the core count).")
    publish(parser, args, "blip_mnist5", "## BLIP on MNIST-5 (full official protocol, CPU)\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
