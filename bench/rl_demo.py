"""The continual-RL demonstration: blip, online_ewc, finetune and ft_fix on the MinAtar stream (breakout →
space_invaders → asterix, the recipe's steps per game), over seeds, two runs at a time (one core each).

    python bench/rl_demo.py [--seeds 3] [--jobs 2] [--out outputs/bench_rl_demo]

Each run is `python train.py experiment=rl_minatar_<approach> seed=<s>` as a user runs it; a complete run already in
--out is reused. Reported: cl.outputs.report's table over the runs (normalized ACC, BWT, FWT, forgetting, LA as mean ± 95 %
CI over seeds; returns ÷ each game's return after its own training; BWT ÷ (T−1)), the final raw returns, the
normalized return matrix averaged over seeds, and seed 0's returns.png and GIF matrix, copied to
docs/figures/rl_demo/ by the canonical run."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import publish  # noqa: E402
from cl.outputs.report import collect, markdown_tables, summarize  # noqa: E402
from cl.outputs.results import read_results  # noqa: E402

RECIPES = {"blip": "rl_minatar_blip", "online_ewc": "rl_minatar_ewc", "finetune": "rl_minatar_ft",
           "ft_fix": "rl_minatar_ftfix"}
FIGURES = ROOT / "docs" / "figures" / "rl_demo"


def run(recipe: str, seed: int, run_dir: Path) -> dict:
    previous = read_results(run_dir)
    if previous and previous.get("complete"):
        return previous
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = run_dir.parent / f"{run_dir.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        code = subprocess.call([sys.executable, str(ROOT / "train.py"), f"experiment={recipe}", f"seed={seed}",
                                "logger=csv", f"hydra.run.dir={run_dir}"], stdout=out, stderr=subprocess.STDOUT,
                               env=env, cwd=ROOT)
    if code:
        raise SystemExit(f"{recipe} seed {seed} failed (exit {code}); see {log}")
    print(f"done: {recipe} seed {seed}", flush=True)
    return read_results(run_dir)


def matrix_table(names: list[str], matrix: np.ndarray) -> str:
    rows = ["| after \\ plays | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    rows += [f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for name, row in zip(names, matrix)]
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench_rl_demo"))
    args = p.parse_args()
    out = Path(args.out)
    jobs = [(a, s) for a in RECIPES for s in range(args.seeds)]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda job: run(RECIPES[job[0]], job[1], out / job[0] / f"seed{job[1]}"), jobs))
    by_approach = {a: [r for (name, _), r in zip(jobs, done) if name == a] for a in RECIPES}
    first = done[0]
    names, steps = first["task_names"], first["env_steps_per_task"]
    matrices = []
    finals = ["| approach | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for approach, runs in by_approach.items():
        final = np.mean([r["return_matrix"][-1] for r in runs], axis=0)
        finals.append(f"| {approach} | " + " | ".join(f"{v:.1f}" for v in final) + " |")
        mean_matrix = np.mean([np.array(r["acc_matrix"], dtype=float) for r in runs], axis=0)
        matrices.append(f"**{approach}**\n\n{matrix_table(names, mean_matrix)}")
    figures = "\n".join(f"- {a}: [returns.png](figures/rl_demo/{a}_returns.png), "
                        f"[GIF matrix](figures/rl_demo/{a}_gif_matrix.gif)" for a in RECIPES)
    written = publish(p, args, "rl_demo", f"""## Continual RL on MinAtar: BLIP, online EWC, fine-tuning, FT-fix

{' → '.join(names)}, {steps:,} environment steps per game, PPO (conf/ppo/minatar.yaml), {args.seeds} seeds
(0–{args.seeds - 1}); the table is `python -m cl.outputs.report {out.name}`'s (mean ± 95 % CI over seeds). Normalized return = greedy return (10 games) ÷ the game's return right after
its own training, so ACC is the mean final normalized return and BWT = mean(final − just-trained) over the first
T−1 games (0 = nothing forgotten, −1 = everything). The runs went two at a time beside other work: their
wall-clock is no speed measurement (bench/rl_throughput.py measures speed).

{chr(10).join(markdown_tables(summarize(collect(out)), heading="###"))}
Final raw returns, mean over seeds:

{chr(10).join(finals)}

Normalized return matrix, mean over seeds (rows: after training game, columns: game played):

{(chr(10) * 2).join(matrices)}

Seed 0's pictures:
{figures}
""")
    if written:
        FIGURES.mkdir(parents=True, exist_ok=True)
        for approach in RECIPES:
            seed0 = out / approach / "seed0"
            shutil.copy(seed0 / "returns.png", FIGURES / f"{approach}_returns.png")
            shutil.copy(seed0 / "gifs" / "gif_matrix.gif", FIGURES / f"{approach}_gif_matrix.gif")


if __name__ == "__main__":
    main()
