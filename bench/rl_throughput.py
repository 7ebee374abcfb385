"""Continual-RL speed: PPO's environment steps per second against the same vectorized environment stepped with
random actions and no learning (the ceiling), and BLIP's PPO update time against fine-tuning's.

    python bench/rl_throughput.py [--updates 8] [--atari-updates 2] [--repeats 3]

For each stream's first game (MinAtar breakout; Atari kung_fu_master with the official 16 × 125 rollout and the
NatureCNN trunk), as the recipes set them up: `updates` PPO updates of finetune and of blip (rollouts + updates,
rl/ppo.py as the task loop runs it), and the same number of environment steps with random actions. Runs alternate;
the best of `repeats` is kept for each. The update-time ratio compares only the update phase (the optimizer steps,
where BLIP adds its projection), over the same rollouts' sizes."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import publish  # noqa: E402
from cl.run.checkpointing import StopRequests  # noqa: E402
from rl.loop import RLLoop  # noqa: E402
from rl.ppo import train_game  # noqa: E402
from tests.conftest import compose_config  # noqa: E402

STREAMS = {"MinAtar breakout": "rl_minatar", "Atari kung_fu_master": "rl_atari6"}
GOAL_RATIO = 1.15


def setup(recipe: str, approach: str) -> RLLoop:
    cfg = compose_config([f"experiment={recipe}", f"rl_approach={approach}", "logger=[]"], Path(tempfile.mkdtemp()))
    loop = RLLoop(cfg, StopRequests())
    loop.build()
    return loop


def ppo_run(recipe: str, approach: str, updates: int) -> dict:
    """Seconds of `updates` PPO updates on game 0: total, rollout phase, update phase."""
    loop = setup(recipe, approach)
    torch.manual_seed(0)
    envs = loop.stream.make(0, loop.ppo.num_envs, 0, train=True)
    spent = {"rollout": 0.0, "update": 0.0}

    def on_update(stats):
        spent["rollout"] += stats.rollout_seconds
        spent["update"] += stats.update_seconds

    loop.approach.on_train_start(0)
    t0 = time.perf_counter()
    train_game(loop.agent, loop.approach, envs, 0, updates, loop.ppo, loop.device, on_update)
    spent["total"] = time.perf_counter() - t0
    envs.close()
    return spent


def random_run(recipe: str, updates: int) -> float:
    """Seconds of the same environment steps with random actions."""
    loop = setup(recipe, "finetune")
    envs = loop.stream.make(0, loop.ppo.num_envs, 0, train=True)
    rng = np.random.default_rng(0)
    envs.reset()
    t0 = time.perf_counter()
    for _ in range(updates * loop.ppo.num_steps):
        envs.step(rng.integers(envs.n_actions, size=envs.num_envs))
    seconds = time.perf_counter() - t0
    envs.close()
    return seconds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--updates", type=int, default=8)
    p.add_argument("--atari-updates", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    rows, projection = [], ""
    for label, recipe in STREAMS.items():
        updates = args.atari_updates if "atari" in recipe else args.updates
        batch = setup(recipe, "finetune").ppo.batch
        steps = updates * batch
        best = {"random": float("inf")}
        phases = {a: {"total": float("inf"), "update": float("inf")} for a in ("finetune", "blip")}
        for r in range(args.repeats):
            best["random"] = min(best["random"], random_run(recipe, updates))
            for approach in phases:
                spent = ppo_run(recipe, approach, updates)
                for k in phases[approach]:
                    phases[approach][k] = min(phases[approach][k], spent[k])
            print(f"{label} repeat {r + 1}: random {steps / best['random']:.0f} steps/s, finetune "
                  f"{steps / phases['finetune']['total']:.0f}, blip {steps / phases['blip']['total']:.0f}", flush=True)
        ft, blip = phases["finetune"], phases["blip"]
        ratio = blip["update"] / ft["update"]
        rows.append(f"| {label} | {steps:,} | {steps / best['random']:.0f} | {steps / ft['total']:.0f} | "
                    f"{best['random'] / ft['total']:.3f} | {steps / blip['total']:.0f} | {ft['update']:.2f} | "
                    f"{blip['update']:.2f} | **{ratio:.3f}** ({'met' if ratio <= GOAL_RATIO else 'not met'}) |")
        if "atari" in recipe:
            total = 6 * 10_000_000
            projection = (f"At these rates the full atari6 protocol (6 games × 10M steps, evaluations apart) would take "
                          f"{total / (steps / ft['total']) / 3600:.0f} h of PPO on this machine, and no less than "
                          f"{total / (steps / best['random']) / 3600:.1f} h of environment stepping alone.")
    publish(p, args, "rl_throughput", f"""## Continual RL: PPO throughput and BLIP's update overhead

Each stream's recipe on its first game, {args.updates} PPO updates on MinAtar (16 × 128 steps each) and
{args.atari_updates} on Atari (16 × 125, NatureCNN), best of {args.repeats} alternating runs. "random" steps the same
vectorized environment with random actions and no learning (the ceiling); PPO ÷ random is the share of that
ceiling PPO keeps. BLIP ÷ finetune compares the update phase (4 epochs × 8 minibatches of optimizer steps; BLIP adds
its projection after each), goal ≤ {GOAL_RATIO}.

| stream | env steps | random steps/s | finetune PPO steps/s | PPO ÷ random | blip PPO steps/s | finetune update s | blip update s | blip ÷ finetune update |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

{projection}
""")


if __name__ == "__main__":
    main()
