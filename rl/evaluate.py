"""Evaluation: the greedy (argmax) policy of a game's head plays on `episodes` environments seeded apart from
training's (whole games: no life-loss ends; raw scores); the mean return of `episodes` finished games is the score.
Which games count is `episodes_from`:
- `each_env`: the first game of every environment, one per environment;
- `first_to_finish`: the first `episodes` games to finish across the environments, which restart after each game
  over, so a short game can count twice and a long one not at all: BLIP's official protocol
  (RL/rl_module/evaluation.py, 10 environments, a deque of the last 10 finished episodes filled until it holds 10;
  when several games end in the step that reaches `episodes`, the deque keeps those of the later environments, and so
  does this).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cl.config.options import Choice, Int, options
from cl.errors import ConfigError
from rl.envs import GameStream
from rl.network import ActorCritic

EPISODES_FROM = ("each_env", "first_to_finish")


@options(episodes=Int(ge=1), episodes_from=Choice(("each_env", "first_to_finish")), every_updates=Int(ge=0),
         max_steps=Int(ge=1, optional=True), gif_frames=Int(ge=0), seed=Int(ge=0))
@dataclass
class EvalSettings:
    """episodes: environments and finished games per evaluation (official 10);
    episodes_from: which finished games count (see the module docstring; official first_to_finish);
    every_updates: evaluate the games seen so far every this many PPO updates (official 100; 0 = at task ends only);
    max_steps: agent steps an evaluation runs at most; the games it still needs then count as they stand (running
      returns, environment order). null: no cap of its own, the environments' episode cap ends every game (official);
    gif_frames: frames recorded for each cell of the GIF matrix (0 = no GIFs);
    seed: environment seeds of evaluation, apart from training's (the same at every evaluation)."""

    episodes: int = 10
    every_updates: int = 100
    max_steps: int | None = 27_000
    gif_frames: int = 600
    seed: int = 10_000
    episodes_from: str = "each_env"

    def __post_init__(self):
        if self.episodes_from not in EPISODES_FROM:
            raise ConfigError(f"rl_eval.episodes_from={self.episodes_from!r} is not one of {', '.join(EPISODES_FROM)}")


@torch.no_grad()
def evaluate(agent: ActorCritic, stream: GameStream, game: int, settings: EvalSettings, seed: int,
             device: torch.device, record: bool = False) -> tuple[float, list[np.ndarray]]:
    """(mean raw return of the greedy policy on game `game`, frames of environment 0's first game when `record`)."""
    envs = stream.make(game, settings.episodes, settings.seed + 1000 * seed + game, train=False)
    try:
        def greedy(obs: np.ndarray) -> np.ndarray:
            return agent.logits(torch.as_tensor(obs, device=device), game).argmax(1).cpu().numpy()

        scores, frames = play(greedy, envs, settings, record)
        return float(np.mean(scores)), frames
    finally:
        envs.close()


def play(policy, envs, settings: EvalSettings, record: bool = False) -> tuple[list[float], list[np.ndarray]]:
    """The returns of the games that count on `envs` (reset here), acting with `policy(obs) -> actions`: each
    environment's first game (each_env) or the first `settings.episodes` games to end (first_to_finish); and frames
    of environment 0's first game when `record`."""
    n = settings.episodes
    first_to_finish = settings.episodes_from == "first_to_finish"
    obs = envs.reset()
    finished: list[float] = []  # first_to_finish: every finished game, in order (ties: environment order)
    first = np.full(envs.num_envs, np.nan)  # each environment's first game (each_env; and env 0's for the GIF)
    running = np.zeros(envs.num_envs)
    frames = [envs.frame(obs[0])] if record else []
    step = 0
    while settings.max_steps is None or step < settings.max_steps:
        result = envs.step(policy(obs))
        step += 1
        running += result.reward
        running[result.game_over] = 0.0
        ended = result.game_over & np.isnan(first)
        first[ended] = result.final_return[ended]
        finished += result.finished_returns
        if record and np.isnan(first[0]) and len(frames) < settings.gif_frames:
            frames.append(envs.frame(result.obs[0]))
        enough = len(finished) >= n if first_to_finish else not np.isnan(first).any()
        if enough:
            break
        obs = result.obs
    if first_to_finish:
        scores = finished[-n:]  # the official deque(maxlen=episodes): the last ones appended
        return scores + running[:n - len(scores)].tolist(), frames  # cut at max_steps: games as they stand
    cut = np.isnan(first)
    first[cut] = running[cut]  # cut at max_steps: the score so far
    return first.tolist(), frames
