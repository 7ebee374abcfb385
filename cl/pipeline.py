"""The task loop: for each task of the stream, fit the approach with a Lightning Trainer, then evaluate every
task's test split (seen and unseen) to fill row t of the accuracy matrix; checkpoint and rewrite the result files
after every task, so a run can be resumed from its run dir."""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from cl.approaches.base import ContinualApproach
from cl.config_check import check_config, check_resume_config
from cl.results import build_results, format_table, read_results, write_results
from cl.task_data import DeviceStream
from cl.timing import TaskTimer
from data.stream import Stream
from data.tensor_loader import TaskBatches

log = logging.getLogger(__name__)
# a Trainer per task: keep Lightning's per-fit banners (accelerator, "max_epochs reached") out of the output
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
# approaches log once per epoch (see ContinualApproach.log_to_loggers), not every n steps
warnings.filterwarnings("ignore", message="The number of training batches .* is smaller than the logging interval")
# emitted by Lightning itself under torch 2.13, once per Trainer; nothing a user can act on
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
CHECKPOINT_DIR = "checkpoints"


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
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k]
            for k in cfg if k != "hydra"}


def build(cfg: DictConfig) -> tuple[Stream, ContinualApproach]:
    stream: Stream = hydra.utils.instantiate(cfg.stream)
    net = hydra.utils.instantiate(cfg.model, input_shape=stream.input_shape,
                                  task_classes=[t.n_classes for t in stream.tasks],
                                  n_shared_classes=stream.n_global_classes)
    approach: ContinualApproach = hydra.utils.instantiate(cfg.approach, net=net)
    approach.setup_stream(stream)
    return stream, approach


def run(cfg: DictConfig) -> dict:
    t_start = time.perf_counter()
    check_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    previous = read_results(run_dir) if cfg.resume else None
    if cfg.resume:
        check_resume_config(cfg, previous, run_dir)
    pl.seed_everything(cfg.seed, verbose=False)
    stream, approach = build(cfg)
    T = len(stream)
    loggers = instantiate_all(cfg.get("logger"))
    callbacks = instantiate_all(cfg.get("callbacks"))
    timer = TaskTimer()

    def make_trainer(t: int) -> pl.Trainer:
        epochs = cfg.first_task.max_epochs if t == 0 and cfg.first_task.max_epochs else cfg.trainer.max_epochs
        return hydra.utils.instantiate(cfg.trainer, max_epochs=epochs, logger=loggers or False,
                                       callbacks=callbacks + [timer], default_root_dir=str(run_dir))

    base_lr = approach.lr
    start = previous["tasks_done"] if previous else 0
    trainer = make_trainer(start)
    data = DeviceStream(stream, trainer.strategy.root_device, shared_head=not approach.net.multi_head)
    eval_limit = cfg.get("eval_max_samples")

    def evaluate_row() -> list[float]:
        return [approach.accuracy(data.source(j, "test").head(eval_limit)) for j in range(T)]

    if previous:
        ckpt = torch.load(run_dir / CHECKPOINT_DIR / f"task_{start - 1}.ckpt", map_location="cpu", weights_only=False)
        approach.load_state_dict(ckpt["state_dict"])
        approach.on_load_checkpoint(ckpt)
        acc_rows, random_init = previous["acc_matrix"], previous["random_init_acc"]
        times = previous["time_s"]
        cl_state = previous["memory"]["cl_state_bytes"]
        step_offset = ckpt["cl_step_offset"]
        elapsed_before = times["total"]
        log.info("resuming %s at task %d of %d", run_dir, start + 1, T)
    else:
        acc_rows, cl_state, step_offset, elapsed_before = [], [], 0, 0.0
        times = {"train": [], "task_end": [], "eval": [], "total": 0.0}
        approach.to(data.device)
        random_init = evaluate_row()
        for lg in loggers:
            lg.log_hyperparams(config_dict(cfg))

    names = [t.name for t in stream.tasks]
    for t in range(start, T):
        pl.seed_everything(task_seed(cfg.seed, t), verbose=False)
        approach.task_id, approach.step_offset = t, step_offset
        approach.lr = cfg.first_task.lr if t == 0 and cfg.first_task.lr else base_lr
        trainer = trainer if t == start else make_trainer(t)
        train_batches = TaskBatches(approach.train_sources(data, t), approach.hparams.batch_size, shuffle=True,
                                    seed=task_seed(cfg.seed, t))
        valid_batches = TaskBatches(approach.valid_sources(data, t), approach.hparams.eval_batch_size)
        trainer.fit(approach, train_batches, valid_batches)
        train_batches.close()  # the next task's data need not share memory with this task's
        valid_batches.close()
        step_offset += trainer.global_step

        t0 = time.perf_counter()
        acc_rows.append(evaluate_row())
        times["eval"].append(time.perf_counter() - t0)
        times["train"].append(timer.train_seconds)
        times["task_end"].append(timer.task_end_seconds)
        cl_state.append(approach.cl_state_bytes())
        times["total"] = elapsed_before + time.perf_counter() - t_start

        trainer.save_checkpoint(run_dir / CHECKPOINT_DIR / f"task_{t}.ckpt")
        results = build_results(
            stream=stream.name, approach=approach.name, model=approach.net.name, seed=cfg.seed, task_names=names, acc_rows=acc_rows,
            random_init_acc=random_init, time_s=times,
            memory={"params": sum(p.numel() for p in approach.net.parameters()), "cl_state_bytes": cl_state},
            approach_info=approach.approach_info(), config=config_dict(cfg))
        if trainer.is_global_zero:
            write_results(run_dir, results)
            for cb in callbacks:  # task-end files of a protocol (e.g. the MAS re-implementation's run folder)
                if hasattr(cb, "on_task_evaluated"):
                    cb.on_task_evaluated(approach, t, acc_rows[-1], run_dir)
        log_task_end(approach, loggers, results, t, step_offset)

    results = read_results(run_dir) if start == T else results
    if rank_zero_only.rank == 0:
        print(f"\n{format_table(results)}\nresults: {run_dir / 'results.json'}", flush=True)
    log_run_end(loggers, results, run_dir)
    for lg in loggers:
        lg.finalize("success")
    return results


@rank_zero_only
def log_run_end(loggers: list, results: dict, run_dir: Path):
    """W&B also gets the final metrics as the run summary and the accuracy heatmap as an image."""
    from pytorch_lightning.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.summary.update({f"cl/{k}": v for k, v in results["metrics"].items()})
            lg.log_image("acc_matrix", [str(run_dir / "acc_matrix.png")])


@rank_zero_only
def log_task_end(approach: ContinualApproach, loggers: list, results: dict, t: int, step: int):
    metrics = {f"acc/{name}": a for name, a in zip(results["task_names"], results["acc_matrix"][t])}
    metrics.update({f"cl/{k}": v for k, v in results["metrics"].items()})
    metrics["cl/tasks_done"] = t + 1
    for key, value in results["approach_info"].items():
        if isinstance(value, (int, float)):
            metrics[f"approach/{key}"] = value
    for lg in loggers:
        lg.log_metrics(metrics, step=step)
