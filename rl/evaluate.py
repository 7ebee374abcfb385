"""The official evaluation protocol: the greedy (argmax) policy of a game's head plays `episodes` whole games on
separately seeded environments (full games: no life-loss ends, raw scores); the mean return is the score."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rl.envs import GameStream
from rl.network import ActorCritic


@dataclass
class EvalSettings:
    """episodes: games played per evaluation (one per environment, official 10);
    every_updates: evaluate the games seen so far every this many PPO updates (official 100; 0 = at task ends only);
    max_steps: a game still running after this many agent steps is scored as it stands;
    gif_frames: frames recorded for each cell of the GIF matrix (0 = no GIFs);
    seed: environment seeds of evaluation, apart from training's (the same at every evaluation)."""

    episodes: int = 10
    every_updates: int = 100
    max_steps: int = 27_000
    gif_frames: int = 600
    seed: int = 10_000


@torch.no_grad()
def evaluate(agent: ActorCritic, stream: GameStream, game: int, settings: EvalSettings, seed: int,
             device: torch.device, record: bool = False) -> tuple[float, list[np.ndarray]]:
    """(mean raw return of the greedy policy on game `game`, frames of environment 0's game when `record`)."""
    envs = stream.make(game, settings.episodes, settings.seed + 1000 * seed + game, train=False)
    try:
        obs = envs.reset()
        scores = np.full(settings.episodes, np.nan)
        running = np.zeros(settings.episodes)
        frames = [envs.frame(obs[0])] if record else []
        for _ in range(settings.max_steps):
            action = agent.logits(torch.as_tensor(obs, device=device), game).argmax(1)
            result = envs.step(action.cpu().numpy())
            running += result.reward
            ended = result.game_over & np.isnan(scores)
            scores[ended] = result.final_return[ended]
            if record and np.isnan(scores[0]) and len(frames) < settings.gif_frames:
                frames.append(envs.frame(result.obs[0]))
            if not np.isnan(scores).any():
                break
            obs = result.obs
        unfinished = np.isnan(scores)
        scores[unfinished] = running[unfinished]  # cut at max_steps: the score so far
        return float(scores.mean()), frames
    finally:
        envs.close()
