"""Vectorized games for continual RL, one interface for Atari (ale-py's C++ vector environment) and MinAtar.

Both give uint8 observations (N, C, H, W), raw (unclipped) rewards, and two kinds of ends per environment:
- `done`: where the value bootstrap stops (a lost life with `episodic_life`, as DeepMind's EpisodicLife wrapper,
  or the end of the game);
- `game_over`: the game really ended (its raw return is then in `finished_returns`), after which the environment
  restarts in the same step, so the returned observation is the first one of the next game.
Training clips the rewards itself (sign), so a single environment serves training and evaluation.

Atari runs in ale-py's `AtariVectorEnv` (bench/atari_vector_envs.py measured the candidates): the DeepMind
preprocessing (no-op reset up to 30, frame skip 4 with max-pool, 84×84 grey, 4-frame stack, fire on reset) in C++
threads. Its own `episodic_life` restarts the whole game at a lost life (ale-py 0.12), so the life signal is read
from `lives` here instead and the game goes on, as in DeepMind's wrapper.

Episode cap (`max_frames_per_episode`, in emulator frames, `frame_skip` per agent step): a number, or `gym_v4`, the
TimeLimit that gym registered for the official code's `<Game>NoFrameskip-v4` ids: 100,000 × the frame skip of the
game's `Deterministic` ids, i.e. 400,000 frames, but 300,000 for space_invaders (gym/envs/__init__.py of the gym
releases with atari_py, which the official envs.py needs, up to 0.20; in 0.18.3 lines 621-624 and 653-659; ale-py's
own later registration of these ids caps them at 108,000 instead). A game cut by the cap ends as a game over, as
gym's TimeLimit ends it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cl.config.options import Bool, Choice, Int, ListOf, PROBABILITY, Text, options
from cl.errors import ConfigError


GYM_V4 = "gym_v4"


def gym_v4_max_frames(game: str) -> int:
    """The frames gym's TimeLimit allows one episode of `<Game>NoFrameskip-v4` (ale-py ROM id `game`)."""
    deterministic_frame_skip = 3 if game == "space_invaders" else 4
    return 100_000 * deterministic_frame_skip


def episode_frame_cap(game: str, setting: int | str) -> int:
    """`max_frames_per_episode` for one game: the number itself, or gym's NoFrameskip-v4 cap for `gym_v4`."""
    if setting == GYM_V4:
        return gym_v4_max_frames(game)
    return setting


@dataclass
class StepResult:
    obs: np.ndarray  # uint8 (N, C, H, W)
    reward: np.ndarray  # float32 (N,), raw
    done: np.ndarray  # bool (N,): no bootstrap past this step
    game_over: np.ndarray  # bool (N,): the game ended (and restarted) in this step
    final_return: np.ndarray  # float (N,): the raw return of each game that ended (where game_over)

    @property
    def finished_returns(self) -> list[float]:
        return self.final_return[self.game_over].tolist()


class AtariGames:
    """`num_envs` copies of one Atari game (ale-py ROM id, e.g. "kung_fu_master")."""

    obs_scale = 255.0

    def __init__(self, game: str, num_envs: int, seed: int, episodic_life: bool = True, noop_max: int = 30,
                 frame_skip: int = 4, frame_stack: int = 4, max_frames_per_episode: int | str = GYM_V4):
        from ale_py.roms import get_all_rom_ids
        from ale_py.vector_env import AtariVectorEnv

        if game not in get_all_rom_ids():
            raise ConfigError(f"rl_stream: ale-py has no Atari game {game!r}; use its ROM ids (snake_case), e.g. "
                              f"kung_fu_master or space_invaders")
        self.max_frames_per_episode = episode_frame_cap(game, max_frames_per_episode)
        self.env = AtariVectorEnv(game, num_envs, noop_max=noop_max, frameskip=frame_skip, stack_num=frame_stack,
                                  img_height=84, img_width=84, grayscale=True, episodic_life=False,
                                  reward_clipping=False, repeat_action_probability=0.0,
                                  max_num_frames_per_episode=self.max_frames_per_episode, autoreset_mode="SameStep")
        self.num_envs, self.episodic_life, self.seed = num_envs, episodic_life, seed
        self.n_actions = int(self.env.single_action_space.n)
        self.obs_shape = (frame_stack, 84, 84)
        self._returns = np.zeros(num_envs)
        self._lives = np.zeros(num_envs, dtype=np.int64)

    def reset(self) -> np.ndarray:
        obs, info = self.env.reset(seed=self.seed)
        self._returns[:] = 0
        self._lives[:] = info["lives"]
        return obs

    def step(self, actions: np.ndarray) -> StepResult:
        obs, reward, terminated, truncated, info = self.env.step(actions.astype(np.int32))
        reward = reward.astype(np.float32)
        self._returns += reward
        game_over = terminated | truncated
        lives = info["lives"]
        done = game_over | (lives < self._lives) if self.episodic_life else game_over
        self._lives[:] = lives
        final = self._returns.copy()
        self._returns[game_over] = 0
        return StepResult(obs, reward, done, game_over, final)

    @staticmethod
    def frame(obs: np.ndarray) -> np.ndarray:
        """The newest 84×84 grey frame of one environment's observation (for GIFs)."""
        return obs[-1]

    def close(self):
        self.env.close()


class MinAtarGames:
    """`num_envs` copies of one MinAtar game (Young & Tian 2019: 10×10 object channels). Observations are padded to
    `channels` (the most any game of the stream has), so one trunk reads every game; actions are the game's minimal
    action set."""

    obs_scale = 1.0

    def __init__(self, game: str, num_envs: int, seed: int, channels: int, sticky_action_prob: float = 0.1,
                 max_episode_steps: int = 10_000):
        from minatar import Environment

        try:
            self.envs = [Environment(game, sticky_action_prob=sticky_action_prob) for _ in range(num_envs)]
        except ModuleNotFoundError:
            raise ConfigError(f"rl_stream: MinAtar has no game {game!r}; its games are asterix, breakout, freeway, "
                              f"seaquest, space_invaders") from None
        for i, env in enumerate(self.envs):
            env.seed(seed + i)
        own = self.envs[0].state_shape()[2]
        if own > channels:
            raise ConfigError(f"rl_stream.channels={channels} is fewer than the {own} channels of MinAtar {game}")
        self.num_envs, self.channels, self.max_episode_steps = num_envs, channels, max_episode_steps
        self.actions = np.asarray(self.envs[0].minimal_action_set())
        self.n_actions = len(self.actions)
        self.obs_shape = (channels, 10, 10)
        self._returns = np.zeros(num_envs)
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._obs = np.zeros((num_envs, *self.obs_shape), dtype=np.uint8)

    def _observe(self, i: int):
        state = self.envs[i].state()  # (10, 10, own channels) bool
        self._obs[i, :state.shape[2]] = state.transpose(2, 0, 1)

    def reset(self) -> np.ndarray:
        for i, env in enumerate(self.envs):
            env.reset()
            self._observe(i)
        self._returns[:] = 0
        self._steps[:] = 0
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> StepResult:
        reward = np.zeros(self.num_envs, dtype=np.float32)
        done = np.zeros(self.num_envs, dtype=bool)
        final = np.zeros(self.num_envs)
        for i, (env, a) in enumerate(zip(self.envs, self.actions[actions])):
            r, terminal = env.act(int(a))
            reward[i] = r
            self._returns[i] += r
            self._steps[i] += 1
            if terminal or self._steps[i] >= self.max_episode_steps:
                done[i] = True
                final[i] = self._returns[i]
                self._returns[i] = 0
                self._steps[i] = 0
                env.reset()
            self._observe(i)
        return StepResult(self._obs.copy(), reward, done, done.copy(), final)

    @staticmethod
    def frame(obs: np.ndarray) -> np.ndarray:
        """One environment's object channels as (10, 10, C) (for GIFs)."""
        return obs.transpose(1, 2, 0)

    def close(self):
        pass


@options(name=Text(), kind=Choice(("atari", "minatar")), games=ListOf(Text(), min_len=1), steps_per_task=Int(ge=1),
         episodic_life=Bool(), noop_max=Int(ge=0), frame_skip=Int(ge=1), frame_stack=Int(ge=1),
         max_frames_per_episode=Int(ge=1) | Choice((GYM_V4,)), channels=Int(ge=1, le=10),
         sticky_action_prob=PROBABILITY, max_episode_steps=Int(ge=1))
class GameStream:
    """The games of an RL stream, in order, and how to make vectorized copies of each. `kind` is atari or minatar;
    `settings` are passed to that kind's class."""

    def __init__(self, name: str, kind: str, games: list[str], steps_per_task: int, **settings):
        if kind not in ("atari", "minatar"):
            raise ConfigError(f"rl_stream.kind={kind!r} must be atari or minatar")
        if not games:
            raise ConfigError("rl_stream.games is empty: list the games to learn in order")
        self.name, self.kind, self.games, self.steps_per_task = name, kind, list(games), steps_per_task
        self.settings = settings

    def __len__(self) -> int:
        return len(self.games)

    def make(self, t: int, num_envs: int, seed: int, train: bool) -> AtariGames | MinAtarGames:
        """Copies of game t seeded from `seed`; evaluation environments end episodes at game over only."""
        if self.kind == "atari":
            settings = dict(self.settings)
            if not train:
                settings["episodic_life"] = False
            return AtariGames(self.games[t], num_envs, seed, **settings)
        return MinAtarGames(self.games[t], num_envs, seed, **self.settings)
