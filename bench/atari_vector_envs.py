"""Which vectorized Atari environment is fastest on this machine for the PPO agent of `rl/`: environment steps per
second with uniformly random actions and no learning, 16 environments (the official BLIP RL setting), KungFuMaster
(the first game of the stream).

    python bench/atari_vector_envs.py [--game KungFuMaster] [--envs 16] [--steps 500] [--warmup 25] [--repeats 3]

Every candidate gives the DeepMind preprocessing the agent uses: no-op reset up to 30, frame skip 4 with max-pool of
the last 2 frames, 84×84 greyscale, 4-frame stack, full episodes (no episodic-life reset), unclipped rewards, no
sticky actions, minimal action set, no FIRE on reset. The candidates:

* ale-py's C++ vector env (`ale_py.vector_env.AtariVectorEnv`, autoreset SameStep), its worker threads at the default
  (`num_threads=0`: ale-py picks the count from the cores) and at 1;
* gymnasium's `AsyncVectorEnv` (one process per environment) and `SyncVectorEnv` over
  `gym.make("ALE/<Game>-v5", frameskip=1, repeat_action_probability=0.0)` wrapped in `AtariPreprocessing` and
  `FrameStackObservation` (autoreset SameStep; `AtariPreprocessing` needs OpenCV);
* envpool (`envpool.make("<Game>-v5", env_type="gymnasium", ...)`, optional: `pip install envpool`); a candidate that
  cannot be imported, built or stepped is reported with its one-line reason instead of a number.

One vector step of N environments counts as N environment steps. Each run builds the candidate, resets it, takes
`warmup` untimed vector steps, then times `steps` vector steps (episodes end and reset inside the timed window as they
would in training); construction is not timed. Runs alternate between candidates and the best of `repeats` is kept for
each, since the machine is shared and noisy. The same seeded action sequence drives every candidate."""
from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import publish  # noqa: E402

NOOP_MAX, FRAME_SKIP, SIZE, STACK = 30, 4, 84, 4
NOISE = 0.10  # differences below this share of the fastest are treated as a tie


def snake(game: str) -> str:
    """ale-py's ROM id for a gymnasium game name: KungFuMaster -> kung_fu_master."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", game).lower()


def make_ale(game: str, envs: int, seed: int, threads: int):
    from ale_py.vector_env import AtariVectorEnv
    env = AtariVectorEnv(snake(game), num_envs=envs, num_threads=threads, noop_max=NOOP_MAX, frameskip=FRAME_SKIP,
                         maxpool=True, img_height=SIZE, img_width=SIZE, grayscale=True, stack_num=STACK,
                         episodic_life=False, reward_clipping=False, repeat_action_probability=0.0,
                         full_action_space=False, use_fire_reset=False, autoreset_mode="SameStep")
    env.reset(seed=seed)
    return env, env.single_action_space.n


def make_gym(game: str, envs: int, seed: int, asynchronous: bool):
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation
    gym.register_envs(ale_py)

    def thunk():
        env = gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.0, full_action_space=False)
        env = AtariPreprocessing(env, noop_max=NOOP_MAX, frame_skip=FRAME_SKIP, screen_size=SIZE,
                                 terminal_on_life_loss=False, grayscale_obs=True)
        return FrameStackObservation(env, stack_size=STACK)

    cls = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
    env = cls([thunk] * envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    env.reset(seed=seed)
    return env, env.single_action_space.n


def make_envpool(game: str, envs: int, seed: int):
    import envpool
    env = envpool.make(f"{game}-v5", env_type="gymnasium", num_envs=envs, seed=seed, noop_max=NOOP_MAX,
                       frame_skip=FRAME_SKIP, img_height=SIZE, img_width=SIZE, gray_scale=True, stack_num=STACK,
                       episodic_life=False, reward_clip=False, repeat_action_probability=0.0,
                       full_action_space=False, use_fire_reset=False)
    env.reset()
    return env, env.action_space.n


CANDIDATES = {
    "ale-py `AtariVectorEnv` (C++ threads, default `num_threads`)": lambda g, n, s: make_ale(g, n, s, 0),
    "ale-py `AtariVectorEnv` (`num_threads=1`)": lambda g, n, s: make_ale(g, n, s, 1),
    "gymnasium `AsyncVectorEnv` (processes) + `AtariPreprocessing`": lambda g, n, s: make_gym(g, n, s, True),
    "gymnasium `SyncVectorEnv` + `AtariPreprocessing`": lambda g, n, s: make_gym(g, n, s, False),
    "envpool": make_envpool,
}


def one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text if len(text) <= 120 else text[:117] + "..."


def run(make, game: str, envs: int, steps: int, warmup: int, seed: int) -> float:
    """Environment steps per second over `steps` timed vector steps after `warmup` untimed ones."""
    env, n_actions = make(game, envs, seed)
    try:
        actions = np.random.default_rng(seed).integers(0, n_actions, size=(warmup + steps, envs))
        for a in actions[:warmup]:
            obs = env.step(a)[0]
        assert obs.shape == (envs, STACK, SIZE, SIZE) and obs.dtype == np.uint8, (obs.shape, obs.dtype)
        t0 = time.perf_counter()
        for a in actions[warmup:]:
            env.step(a)
        return envs * steps / (time.perf_counter() - t0)
    finally:
        close = getattr(env, "close", None)
        if close is not None:
            close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--game", default="KungFuMaster", help="gymnasium ALE name, e.g. KungFuMaster, Breakout")
    p.add_argument("--envs", type=int, default=16)
    p.add_argument("--steps", type=int, default=500, help="timed vector steps per run (each is ENVS env steps)")
    p.add_argument("--warmup", type=int, default=25, help="untimed vector steps before timing")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    warnings.filterwarnings("ignore")

    best = {name: 0.0 for name in CANDIDATES}
    failed: dict[str, str] = {}
    for r in range(args.repeats):
        for name, make in CANDIDATES.items():
            if name in failed:
                continue
            try:
                rate = run(make, args.game, args.envs, args.steps, args.warmup, args.seed + r)
            except Exception as exc:  # noqa: BLE001 - an optional candidate that does not work is reported, not fatal
                failed[name] = one_line(exc)
                print(f"repeat {r + 1}: {name}: failed: {failed[name]}", flush=True)
                continue
            best[name] = max(best[name], rate)
            print(f"repeat {r + 1}: {name:<64} {rate:8.0f} steps/s", flush=True)

    measured = {name: rate for name, rate in best.items() if name not in failed}
    if not measured:
        raise SystemExit("no candidate ran")
    fastest = max(measured, key=measured.get)
    rows = []
    for name in sorted(CANDIDATES, key=lambda k: -best[k] if k in measured else 0):
        if name in failed:
            rows.append(f"| {name} | {args.envs} | not measured: {failed[name].replace('|', '/')} | |")
        else:
            mark = "**" if name == fastest else ""
            rows.append(f"| {mark}{name}{mark} | {args.envs} | {mark}{measured[name]:.0f}{mark} | "
                        f"{measured[name] / measured[fastest]:.2f}× |")
    ale = {k: v for k, v in measured.items() if k.startswith("ale-py")}
    if not ale:
        verdict = f"{fastest} is the fastest; ale-py's `AtariVectorEnv` could not be measured"
    else:
        ale_best = max(ale, key=ale.get)
        share = ale[ale_best] / measured[fastest]
        if fastest in ale:
            others = {k: v for k, v in measured.items() if k not in ale}
            lead = ""
            if others:
                ratio, runner_up = ale[ale_best] / max(others.values()), max(others, key=others.get)
                lead = f", {ratio:.2f}× the next candidate, {runner_up}"
                if ratio < 1 + NOISE:
                    lead += " (a lead inside the run-to-run noise of this shared machine)"
            verdict = (f"ale-py's `AtariVectorEnv` is the fastest at {ale[ale_best]:.0f} steps/s{lead}; it is "
                       "therefore the one `rl/` uses")
        elif share >= 1 - NOISE:
            verdict = (f"{fastest} measured fastest, but ale-py's `AtariVectorEnv` is within {NOISE:.0%} of it "
                       f"({share:.2f}×, inside the run-to-run noise of this shared machine), so `rl/` keeps "
                       "ale-py's `AtariVectorEnv`, which needs no extra dependency")
        else:
            verdict = (f"{fastest} is the fastest, {1 / share:.2f}× ale-py's `AtariVectorEnv` (which `rl/` was "
                       "going to use), more than the run-to-run noise: the measurement favours switching")
    publish(p, args, "atari_vector_envs", f"""## Atari vectorized environments (random actions, no learning)

{args.game}, {args.envs} environments stepped with seeded uniformly random actions, DeepMind preprocessing in every
candidate (no-op reset ≤ {NOOP_MAX}, frame skip {FRAME_SKIP} with max-pool of the last 2 frames, {SIZE}×{SIZE}
greyscale, {STACK}-frame stack, full episodes, unclipped rewards, no sticky actions, minimal action set).
Environment steps per second (one vector step = {args.envs} steps) over {args.steps} timed vector steps after
{args.warmup} untimed ones, construction not timed; best of {args.repeats} alternating runs.

| candidate | envs | steps/s | relative to fastest |
|---|---|---|---|
{chr(10).join(rows)}

Measured: {verdict}.
""")


if __name__ == "__main__":
    main()
