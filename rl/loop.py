"""The continual-RL task loop, the counterpart of cl/run/supervised.py: for each game of the stream, PPO on it (rl/ppo.py)
with the approach's hooks, the approach's task end, then every game evaluated greedily to fill row t of the return
matrix; checkpoint and rewrite the result files after every game, so `resume=true` continues from the last
finished one and gives the same numbers as an uninterrupted run (every game re-seeds torch and its environments
from (seed, game)).

results.json keeps the supervised schema: `acc_matrix` holds the normalized returns (÷ each game's return at the
end of its own training, so ACC and BWT read as in classification; null until that game has trained),
`return_matrix` the raw mean returns, `curves` the evaluations during training.
"""
from __future__ import annotations

import collections
import logging
import sys
import time

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric import Fabric
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only
from tqdm import tqdm

from cl.run.checkpointing import (LOG_POSITIONS, StopRequests, continue_logs, log_positions, task_checkpoint,
                              write_checkpoint)
from cl.errors import ConfigError, RunInterrupted
from cl.outputs.loggers import log_run_to_wandb
from cl.run.skeleton import ContinualRun, config_dict, instantiate_all, task_seed
from cl.callbacks.progress import duration
from cl.run.run_dir import to_run_log
from cl.outputs.results import atomic_write, build_results
from rl.approaches import RLApproach
from rl.envs import GameStream
from rl.evaluate import EvalSettings, evaluate
from rl.network import ActorCritic
from cl.outputs.rl_plots import frame_to_rgb, gif_matrix, normalized_matrix_png, returns_png
from rl.ppo import PPOSettings, UpdateStats, train_game

log = logging.getLogger(__name__)
RETURNS_PLOT, GIF_DIR = "returns.png", "gifs"


def run(cfg: DictConfig) -> dict:
    with StopRequests() as stops:
        return RLLoop(cfg, stops).run()


class GameProgress:
    """A game's training progress: a tqdm bar on a terminal; where stdout is a file or a pipe (a cluster job's log),
    where a bar would write a carriage-return redraw for every refresh, plain lines instead, and in the run's
    train.log either way: one every `lines`-th part of the game's updates and one at its end (update, environment
    steps, steps per second, the mean return of the last 10 training episodes, the newest greedy evaluation of the
    games so far when there was one since the last line, the time the game's remaining updates take at this pace).
    Rank 0 only."""

    def __init__(self, game: str, updates: int, batch: int, enabled: bool = True, lines: int = 20,
                 terminal: bool | None = None):
        self.game, self.updates, self.batch, self.enabled = game, updates, batch, enabled
        self.every = max(1, updates // lines)
        self.t0 = time.perf_counter()
        self.evaluated: dict[str, float] = {}
        terminal = sys.stdout.isatty() if terminal is None else terminal
        self.bar = (tqdm(total=updates * batch, unit="step", unit_scale=True, mininterval=2.0, dynamic_ncols=True,
                         desc=game) if enabled and terminal else None)

    def update(self, update: int, mean_return: float | None):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.batch)
            if mean_return is not None:
                self.bar.set_postfix(ret=f"{mean_return:.1f}", refresh=False)
        if update % self.every and update != self.updates:
            return
        seconds = time.perf_counter() - self.t0
        steps = update * self.batch
        parts = [self.game, f"update {update}/{self.updates}",
                 f"steps {_count(steps)}/{_count(self.updates * self.batch)}",
                 f"{steps / max(seconds, 1e-9):.0f} steps/s",
                 "return " + ("—" if mean_return is None else f"{mean_return:.2f}")]
        if self.evaluated:
            parts.append("eval " + " ".join(f"{name} {r:.2f}" for name, r in self.evaluated.items()))
            self.evaluated = {}
        parts.append(f"{seconds:.1f} s")
        if update < self.updates:
            parts.append(f"game ETA {duration(seconds / update * (self.updates - update))}")
        if self.bar is None:
            print("  ".join(parts), flush=True)
        else:  # the terminal shows the bar; the run's train.log gets the lines
            to_run_log("  ".join(parts))

    def evaluation(self, returns: dict[str, float]):
        """A greedy evaluation during training: the next line shows it."""
        self.evaluated = dict(returns)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _count(n: int) -> str:
    """1024, 25.6k, 1.25M."""
    return f"{n / 1e6:.3g}M" if n >= 10**6 else f"{n / 1e3:.3g}k" if n >= 10**4 else str(n)


def normalized(raw: list[list[float]], diagonal: list[float | None]) -> list[list[float | None]]:
    """raw[i][j] ÷ game j's return after its own training (None where that is unknown or not positive)."""
    return [[None if d is None or d <= 0 else r / d for r, d in zip(row, diagonal)] for row in raw]


def without_nan(values):
    """NaN → None (JSON null): a metric over a game whose normalization is undefined is unknown, not a number."""
    if isinstance(values, dict):
        return {k: without_nan(v) for k, v in values.items()}
    if isinstance(values, list):
        return [without_nan(v) for v in values]
    return None if isinstance(values, float) and np.isnan(values) else values


def state_bytes(module: torch.nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in module.buffers())


class RLLoop(ContinualRun):
    unit = "game"
    checkpoint_keys = ("agent", "approach")

    def __init__(self, cfg: DictConfig, stops: StopRequests):
        missing = [g for g in ("rl_model", "rl_approach", "ppo", "rl_eval") if cfg.get(g) is None]
        if missing:
            raise ConfigError(f"continual RL needs {', '.join(missing)} too: start from a recipe that selects every "
                              f"RL group, e.g. experiment=rl_minatar or experiment=rl_atari6")
        devices = cfg.trainer.get("devices", 1)
        if devices not in (1, "1", "auto") or cfg.trainer.get("num_nodes", 1) != 1:
            raise ConfigError(f"continual RL runs on one device (trainer.devices={devices}): its environments feed "
                              f"one learner; use trainer=cpu or trainer=gpu")
        if str(cfg.trainer.get("precision", "32")) not in ("32", "32-true"):
            raise ConfigError(f"continual RL trains in float32 (trainer.precision={cfg.trainer.precision}); "
                              f"set trainer.precision=32")
        super().__init__(cfg, stops)
        self.raw_rows: list[list[float]] = []  # the return matrix's rows so far (none: no figure to draw)
        self.fabric = Fabric(accelerator=cfg.trainer.get("accelerator", "cpu"), devices=1, precision="32-true")
        self.device = self.fabric.device
        self.ppo: PPOSettings = hydra.utils.instantiate(cfg.ppo)
        self.eval: EvalSettings = hydra.utils.instantiate(cfg.rl_eval)

    def build(self):
        cfg = self.cfg
        pl.seed_everything(cfg.seed, verbose=False)
        self.stream: GameStream = hydra.utils.instantiate(cfg.rl_stream)
        shapes, actions = set(), []
        for t in range(len(self.stream)):  # each game's action count and observation shape, from one copy of it
            probe = self.stream.make(t, 1, 0, train=True)
            shapes.add(probe.obs_shape)
            actions.append(probe.n_actions)
            obs_scale = probe.obs_scale
            probe.close()
        if len(shapes) != 1:
            raise ConfigError(f"the games of rl_stream={self.stream.name} have different observation shapes {shapes}")
        obs_shape = shapes.pop()
        trunk = hydra.utils.instantiate(cfg.rl_model, in_channels=obs_shape[0])
        self.agent = ActorCritic(trunk, obs_shape, actions, obs_scale, name=cfg.rl_model._target_.rsplit(".", 1)[1])
        self.approach: RLApproach = hydra.utils.instantiate(cfg.rl_approach)
        self.approach.attach(self.agent)
        self.agent.to(self.device)
        self.approach.to(self.device)
        self.updates = self.ppo.updates(self.stream.steps_per_task)
        self.names = list(self.stream.games)
        self.loggers = instantiate_all(cfg.get("logger"))

    def start(self) -> int:
        self.raw_rows, self.curves, self.cl_state = [], [], []
        self.times = {k: [] for k in ("train", "rollout", "update", "task_end", "eval", "io")}
        self.times.update(total=0.0, setup=0.0)
        self.elapsed_before = 0.0
        self.random_init = [evaluate(self.agent, self.stream, j, self.eval, self.cfg.seed, self.device)[0]
                            for j in range(len(self.stream))]
        for lg in self.loggers:
            lg.log_hyperparams(config_dict(self.cfg))
        self.times["setup"] = time.perf_counter() - self.t_start
        self.write_results()
        return 0

    def restore(self) -> int:
        saved = self.previous["tasks_done"]
        done, ckpt = self.last_readable(saved, map_location=self.device)
        prev = self.previous
        self.raw_rows, self.random_init = prev["return_matrix"], prev["random_init_return"]
        self.curves, self.times, self.cl_state = prev["curves"], prev["time_s"], prev["memory"]["cl_state_bytes"]
        self.elapsed_before = self.times["total"]
        if ckpt is None:
            continue_logs(self.loggers, None)
            if not saved:  # else last_readable said why
                log.info("resuming %s: no game had finished, so game 1 starts over", self.run_dir)
            return 0
        self.agent.load_state_dict(ckpt["agent"])
        self.approach.load_state_dict(ckpt["approach"])
        continue_logs(self.loggers, ckpt)
        log.info("resuming %s at game %d of %d", self.run_dir, done + 1, len(self.stream))
        return done

    # --- one game ---------------------------------------------------------------------------------------------
    def train_task(self, t: int):
        cfg, s = self.cfg, self.ppo
        pl.seed_everything(task_seed(cfg.seed, t), verbose=False)
        envs = self.stream.make(t, s.num_envs, task_seed(cfg.seed, t), train=True)
        self.approach.on_train_start(t)
        recent: collections.deque[float] = collections.deque(maxlen=10)
        spent = {"rollout": 0.0, "update": 0.0}
        offset = t * self.updates * s.batch
        game = f"game {t + 1}/{len(self.stream)} {self.names[t]}"
        progress = GameProgress(game, self.updates, s.batch, self.fabric.is_global_zero)

        def on_update(stats: UpdateStats):
            recent.extend(stats.episode_returns)
            spent["rollout"] += stats.rollout_seconds
            spent["update"] += stats.update_seconds
            step = offset + stats.env_steps
            if stats.update % 10 == 0 or stats.update == self.updates:
                metrics = {f"train/{k}": getattr(stats, k) for k in
                           ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "lr")}
                if recent:
                    metrics["train/episode_return"] = float(np.mean(recent))
                self.log_metrics(metrics, step)
            every = self.eval.every_updates
            if every and stats.update % every == 0 and stats.update < self.updates:
                progress.evaluation(self.evaluate_seen(t, step))
            progress.update(stats.update, float(np.mean(recent)) if recent else None)
            if self.stops.signum is not None:
                raise RunInterrupted(self.stops.signum, f"in game {t + 1}, which starts over when resumed")

        t0 = time.perf_counter()
        try:
            rollout = train_game(self.agent, self.approach, envs, t, self.updates, s, self.device, on_update)
        finally:
            progress.close()
            envs.close()
        t1 = time.perf_counter()
        self.approach.on_train_end(self.agent, t, rollout.obs.flatten(0, 1))
        self.times["train"].append(t1 - t0)
        self.times["task_end"].append(time.perf_counter() - t1)
        self.times["rollout"].append(spent["rollout"])
        self.times["update"].append(spent["update"])

    def evaluate_seen(self, t: int, step: int) -> dict[str, float]:
        returns = {self.names[j]: evaluate(self.agent, self.stream, j, self.eval, self.cfg.seed, self.device)[0]
                   for j in range(t + 1)}
        self.curves.append({"step": step, "task": t, "returns": returns})
        self.log_metrics({f"eval/{name}": r for name, r in returns.items()}, step)
        return returns

    def finish_task(self, t: int):
        t0 = time.perf_counter()
        row = []
        for j in range(len(self.stream)):
            score, frames = evaluate(self.agent, self.stream, j, self.eval, self.cfg.seed, self.device,
                                     record=j <= t and self.eval.gif_frames > 0)
            row.append(score)
            if frames:
                self.save_frames(t, j, frames)
        self.raw_rows.append(row)
        step = (t + 1) * self.updates * self.ppo.batch
        self.curves.append({"step": step, "task": t, "returns": {self.names[j]: row[j] for j in range(t + 1)}})
        self.times["eval"].append(time.perf_counter() - t0)
        self.cl_state.append(state_bytes(self.approach))
        self.log_metrics({f"return/{n}": r for n, r in zip(self.names, row)}, step)
        self.record_task(t, step)

    # --- files --------------------------------------------------------------------------------------------------
    def build_results(self) -> dict:
        self.times["total"] = self.elapsed_before + time.perf_counter() - self.t_start
        k = len(self.raw_rows)
        diagonal = [self.raw_rows[j][j] if j < k else None for j in range(len(self.names))]
        results = build_results(
            stream=self.stream.name, approach=self.approach.name, model=self.agent.name, seed=self.cfg.seed,
            task_names=self.names, acc_rows=normalized(self.raw_rows, diagonal),
            random_init_acc=normalized([self.random_init], diagonal)[0], time_s=self.times,
            memory={"params": sum(p.numel() for p in self.agent.parameters()), "cl_state_bytes": self.cl_state},
            approach_info=self.approach.approach_info(), config=config_dict(self.cfg))
        results.update(metrics=without_nan(results["metrics"]),
                       forgetting_per_task=without_nan(results["forgetting_per_task"]), return_matrix=self.raw_rows,
                       random_init_return=self.random_init, curves=self.curves,
                       env_steps_per_task=self.updates * self.ppo.batch,
                       normalization="acc_matrix = return ÷ the game's return after its own training")
        self.results = results
        return results

    @rank_zero_only
    def save_checkpoint(self, t: int):
        write_checkpoint(task_checkpoint(self.run_dir, t), {
            "agent": self.agent.state_dict(), "approach": self.approach.state_dict(), "game": t,
            LOG_POSITIONS: log_positions(self.loggers)})

    def save_frames(self, t: int, j: int, frames: list[np.ndarray]):
        path = self.run_dir / GIF_DIR / f"frames_{t}_{j}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, frames=np.stack(frames))

    @rank_zero_only
    def write_figures(self):
        if not self.raw_rows:
            return
        results = self.build_results()
        title = f"{results['approach']} on {results['stream']}"
        if self.curves:
            atomic_write(self.run_dir / RETURNS_PLOT, returns_png(self.curves, self.names, results["env_steps_per_task"],
                                                                  title))
        m = results["metrics"]
        if m and m["acc"] is not None:
            title += f"\nnormalized ACC {m['acc']:.2f}  BWT {m['bwt']:+.2f}"
        atomic_write(self.run_dir / "acc_matrix.png", normalized_matrix_png(results["acc_matrix"], self.names, title))
        scale = 8 if self.stream.kind == "minatar" else 2
        frames = [[self.load_frames(i, j, scale) for j in range(len(self.names))]
                  for i in range(len(self.raw_rows))]
        if any(cell for row in frames for cell in row):
            gif_matrix(frames, self.names, self.run_dir / GIF_DIR)

    def load_frames(self, i: int, j: int, scale: int) -> list[np.ndarray]:
        path = self.run_dir / GIF_DIR / f"frames_{i}_{j}.npz"
        if not path.exists():
            return []
        return [frame_to_rgb(f, scale) for f in np.load(path)["frames"]]

    # --- logging ------------------------------------------------------------------------------------------------
    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int):
        for lg in self.loggers:
            lg.log_metrics(metrics, step=step)

    @rank_zero_only
    def log_end(self):
        """W&B: as a supervised run's (cl/outputs/loggers.py), with the GIF matrix as videos."""
        log_run_to_wandb(self.loggers, self.results, self.run_dir, [RETURNS_PLOT, "acc_matrix.png"],
                         sorted((self.run_dir / GIF_DIR).glob("*.gif")))

    def table(self, results: dict) -> str:
        names = results["task_names"]
        w = max(10, max(len(n) for n in names) + 2)
        lines = ["mean greedy return — rows: after training game, columns: game played",
                 " " * w + "".join(f"{n:>{w}}" for n in names),
                 f"{'random':<{w}}" + "".join(f"{r:>{w}.1f}" for r in results["random_init_return"])]
        lines += [f"{n:<{w}}" + "".join(f"{r:>{w}.1f}" for r in row)
                  for n, row in zip(names, results["return_matrix"])]
        lines += ["", "normalized (÷ the game's return after its own training)"]
        lines += [f"{n:<{w}}" + "".join(f"{'—' if r is None else f'{r:.2f}':>{w}}" for r in row)
                  for n, row in zip(names, results["acc_matrix"])]
        m = results["metrics"]
        if m and m["acc"] is not None:
            lines += ["", f"normalized ACC {m['acc']:.3f}   BWT {m['bwt']:+.3f}   forgetting {m['forgetting']:.3f}"]
        elif m:
            lines += ["", "normalized ACC and BWT undefined: a game's return after its own training was not positive"]
        lines.append(f"time {results['time_s']['total']:.1f} s")
        return "\n".join(lines)
