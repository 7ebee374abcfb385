"""The run skeleton the supervised task loop (cl/run/supervised.py) and the RL loop (rl/loop.py) share: build, start
or resume, train and finish each task, checkpoint and write the results after every task, close the loggers however
the run ends; and the helpers both use (seeding per task, instantiating config sections, quiet Lightning)."""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from cl.config.checks import check_config, check_resume_config
from cl.errors import ConfigError, RunInterrupted
from cl.outputs.loggers import offline_note
from cl.outputs.results import RESULTS_FILE, read_results, results_until, write_results
from cl.run.checkpointing import StopRequests, UnreadableCheckpoint, read_checkpoint, set_aside, task_checkpoint

log = logging.getLogger(__name__)
# a Trainer per task: keep Lightning's per-fit banners (accelerator, "max_epochs reached") out of the output
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
# Lightning's warnings about settings of the pipeline's own making, nothing a user can act on:
QUIET_WARNINGS = (
    # approaches log once per epoch (see ContinualApproach.log_to_loggers), not every n steps
    "The number of training batches .* is smaller than the logging interval",
    # emitted by Lightning itself under torch 2.13, once per Trainer
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # runs without a validation split (e.g. GEM's protocols): nothing to validate is expected, not a mistake
    "You defined a `validation_step` but have no `val_dataloader`",
    # a mid-task resume restores the batch position itself (TaskBatches.start_at), which Lightning cannot see
    "You're resuming from a checkpoint that ended before the epoch ended",
    # LwF's GEM variant returns None from training_step in its first epoch on purpose (cl/approaches/regularization/lwf.py)
    "`training_step` returned `None`",
)
for _message in QUIET_WARNINGS:
    warnings.filterwarnings("ignore", message=_message)


@contextlib.contextmanager
def quiet_lightning():
    """QUIET_WARNINGS ignored in this block also where the process's warning filters were reset since this module
    was imported (a caller's `warnings.catch_warnings`, as pytest's around every test)."""
    with warnings.catch_warnings():
        for message in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


def task_seed(seed: int, t: int) -> int:
    """Each task re-seeds from (seed, t), so a resumed run draws the same numbers as an uninterrupted one."""
    return seed * 10_007 + t


def instantiate_all(section: DictConfig | None) -> list:
    """Instantiate every `_target_` entry of a dict-of-configs section (callbacks, loggers)."""
    if not section:
        return []
    return [hydra.utils.instantiate(c) for c in section.values() if isinstance(c, DictConfig) and "_target_" in c]


def config_dict(cfg: DictConfig) -> dict:
    """The resolved experiment config as plain data (without Hydra's own node, which tests compose in)."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], (DictConfig, ListConfig)) else cfg[k]
            for k in cfg if k != "hydra"}


def check_accelerator(cfg: DictConfig):
    if cfg.trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={cfg.trainer.accelerator} but no GPU is visible to torch "
                          f"{torch.__version__} here; trainer=cpu runs on this machine")


@rank_zero_only
def say(message: str):
    print(message, flush=True)


class ContinualRun:
    """What the supervised task loop and the RL one (rl/loop.py) share. A complete run says so and returns its
    results. Otherwise: build, start or resume, then for each remaining task train it and finish it (evaluate, log,
    checkpoint, write the results), stopping cleanly after a task when a stop was requested. The figures are drawn
    and the loggers closed whether the run ends, fails or is interrupted. A subclass gives `build()`, `start()` and
    `restore()` (each returns the first task to train and sets `times`), `train_task(t)`, `finish_task(t)` (which
    calls `record_task`), `build_results()` (which sets `results`), `save_checkpoint(t)`, `write_figures()`,
    `table(results)` and `log_end()`, and sets `stream` and `loggers` in build(). `restore()` finds its checkpoint
    with `last_readable`, which falls back over unreadable ones; results.json is then rewritten to match."""
    unit = "task"  # what the run's messages call one element of its stream
    checkpoint_keys: tuple[str, ...] = ()  # what a task checkpoint of this loop must hold to be used

    def __init__(self, cfg: DictConfig, stops: StopRequests):
        self.t_start = time.perf_counter()
        self.cfg, self.stops = cfg, stops
        check_config(cfg)
        check_accelerator(cfg)
        self.run_dir = Path(cfg.paths.output_dir)
        self.previous = read_results(self.run_dir) if cfg.resume else None
        if cfg.resume:
            check_resume_config(cfg, self.previous, self.run_dir)

    def run(self) -> dict:
        previous = self.previous
        if previous and previous["complete"]:
            say(f"the run in {self.run_dir} is complete ({previous['tasks_done']} of {len(previous['task_names'])} "
                f"{self.unit}s): nothing to resume\n\n{self.table(previous)}")
            return previous
        self.build()  # the data and the model: a run that cannot start (data missing) never names a run dir
        say(f"run dir: {self.run_dir}")
        try:
            start = self.restore() if previous else self.start()
            if previous and start < previous["tasks_done"]:  # fell back to an older checkpoint: so do the results
                self.write_results()
            for t in range(start, len(self.stream)):
                self.train_task(t)
                self.finish_task(t)
                if self.stops.signum is not None:
                    raise RunInterrupted(self.stops.signum, f"after {self.unit} {t + 1}")
        except BaseException:
            self.write_figures()
            close_loggers(self.loggers, "failed")
            raise
        self.write_figures()
        say(f"\n{self.table(self.results)}\nresults: {self.run_dir / RESULTS_FILE}")
        self.log_end()
        close_loggers(self.loggers, "success")
        return self.results

    def record_task(self, t: int, step: int) -> None:
        """Log, checkpoint and write the results after task t, in this order: results.json never names a task whose
        checkpoint is missing, and each checkpoint knows how far the logs got. Its time is time_s.io."""
        t0 = time.perf_counter()
        self.times["io"].append(0.0)
        results = self.build_results()
        log_task_end(self.loggers, results, t, step)
        for lg in self.loggers:
            lg.save()
        self.save_checkpoint(t)
        self.times["io"][-1] = time.perf_counter() - t0
        self.write_results(results)

    @rank_zero_only
    def write_results(self, results: dict | None = None):
        write_results(self.run_dir, results or self.build_results())

    def read_or_set_aside(self, path: Path, keys: tuple[str, ...], map_location="cpu") -> dict | None:
        """The checkpoint at `path`, or None when it cannot be read: then a line says which file and why, and rank 0
        moves the file aside (cl.run.checkpointing.set_aside)."""
        try:
            return read_checkpoint(path, keys, map_location)
        except UnreadableCheckpoint as why:
            moved = ""
            if path.exists() and rank_zero_only.rank == 0:
                moved = f"; moved it aside to {set_aside(path).name}"
            log.warning("checkpoint %s cannot be read (%s)%s", path, why, moved)
            return None

    def last_readable(self, done: int, map_location="cpu") -> tuple[int, dict | None]:
        """The newest task checkpoint that can be read (task `done`'s, else the one before, ...) and how many tasks
        it has finished; (0, None) when there is none, and the run starts again at its first task. A fallback cuts
        `previous` to the tasks kept (cl.outputs.results.results_until): the later ones are trained again."""
        kept, checkpoint = 0, None
        for k in range(done, 0, -1):
            checkpoint = self.read_or_set_aside(task_checkpoint(self.run_dir, k - 1), self.checkpoint_keys,
                                                map_location)
            if checkpoint is not None:
                kept = k
                break
        if kept < done:
            self.previous = results_until(self.previous, kept)
            again = (f"{self.unit} {done} is" if kept + 1 == done else f"{self.unit}s {kept + 1}-{done} are")
            since = task_checkpoint(self.run_dir, kept - 1) if kept else "the start: no task checkpoint can be read"
            log.warning("falling back to %s; %s trained again", since, again)
        return kept, checkpoint


def close_loggers(loggers: list, status: str):
    """Flush every logger and end its run: a W&B run left open would swallow the next run of this process (a
    Hydra sweep runs its jobs one after another in one process)."""
    from pytorch_lightning.loggers import WandbLogger

    for lg in loggers:
        lg.finalize(status)
        if isinstance(lg, WandbLogger) and lg._experiment is not None:
            note = offline_note(lg)
            lg._experiment.finish(exit_code=0 if status == "success" else 1)
            if note:
                say(note)


@rank_zero_only
def log_task_end(loggers: list, results: dict, t: int, step: int):
    metrics = {f"acc/{name}": a for name, a in zip(results["task_names"], results["acc_matrix"][t])}
    metrics.update({f"cl/{k}": v for k, v in results["metrics"].items()})
    metrics["cl/tasks_done"] = t + 1
    for key, value in results["approach_info"].items():
        if isinstance(value, (int, float)):
            metrics[f"approach/{key}"] = value
    metrics = {k: v for k, v in metrics.items() if v is not None}  # an RL game not yet normalizable
    for lg in loggers:
        lg.log_metrics(metrics, step=step)
