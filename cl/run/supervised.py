"""The task loop: for each task of the stream, fit the approach with a Lightning Trainer, then evaluate every
task's test split (seen and unseen) to fill row t of the accuracy matrix; checkpoint and rewrite the result files
after every task, so a run can be resumed from its run dir, also from inside a task (cl/run/checkpointing.py)."""
from __future__ import annotations

import logging
import time

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, open_dict
from pytorch_lightning.utilities import rank_zero_only

from cl.approaches.base import ContinualApproach
from cl.callbacks.timing import TaskTimer
from cl.config.checks import PIPELINE_STREAM_OPTIONS
from cl.errors import ConfigError
from cl.outputs.loggers import log_run_to_wandb
from cl.outputs.results import build_results, format_table, write_figures
from cl.run.checkpointing import (AtomicCheckpointIO, MidTaskCheckpoints, ResumePoint, StopRequests, continue_logs,
                                  mid_task_checkpoint, read_resume_point, remove_quietly, task_checkpoint)
from cl.run.skeleton import ContinualRun, config_dict, instantiate_all, quiet_lightning, task_seed
from data.device_stream import DeviceStream
from data.stream import Stream
from data.tensor_loader import TaskBatches

log = logging.getLogger(__name__)


def build(cfg: DictConfig) -> tuple[Stream, ContinualApproach]:
    stream_cfg = cfg.stream.copy()  # the options every stream has, applied here (the copy resolves as cfg.stream)
    with open_dict(stream_cfg):
        applied = {key: stream_cfg.pop(key, None) for key in PIPELINE_STREAM_OPTIONS}
    stream: Stream = hydra.utils.instantiate(stream_cfg).subsample_train(applied["use"], cfg.seed)
    if cfg.get("protocol") == "validation":
        stream = stream.head(cfg.validation_tasks)
    net = hydra.utils.instantiate(cfg.model, input_shape=stream.input_shape,
                                  task_classes=[t.n_classes for t in stream.tasks],
                                  n_shared_classes=stream.n_global_classes)
    approach: ContinualApproach = hydra.utils.instantiate(cfg.approach, net=net)
    approach.setup_stream(stream)
    return stream, approach


def run(cfg: DictConfig) -> dict:
    """Run (or resume) the experiment of `cfg`; returns its results.json content."""
    with StopRequests() as stops:
        return TaskLoop(cfg, stops).run()


# what a mid-task checkpoint must hold to be resumed from (a task checkpoint: TaskLoop.checkpoint_keys)
MID_TASK_KEYS = ("state_dict", "cl_task_id", "cl_task_step_offset", "cl_resume")


class TaskLoop(ContinualRun):
    checkpoint_keys = ("state_dict", "cl_step_offset")

    def __init__(self, cfg: DictConfig, stops: StopRequests):
        super().__init__(cfg, stops)
        self.acc_rows: list[list[float]] = []  # the accuracy matrix's rows so far (none: no figure to draw)
        self.resume_point: ResumePoint | None = None  # where restore() found the first task to continue

    def build(self):
        cfg, run_dir = self.cfg, self.run_dir
        pl.seed_everything(cfg.seed, verbose=False)
        self.stream, self.approach = build(cfg)
        self.loggers = instantiate_all(cfg.get("logger"))
        self.callbacks = instantiate_all(cfg.get("callbacks"))
        self.timer = TaskTimer()
        self.mid_task = MidTaskCheckpoints(run_dir, self.stops, cfg.get("checkpoint_every_n_steps"), self.loggers)
        self.mid_task.timer = self.timer
        self.base_lr = self.approach.lr
        if not self.approach.automatic_optimization:  # it steps its optimizer itself, past Lightning's plugins
            if cfg.trainer.get("gradient_clip_val"):
                raise ConfigError(f"approach={self.approach.name} steps its optimizer itself, which Lightning's "
                                  f"trainer.gradient_clip_val cannot clip; set trainer.gradient_clip_val=null")
            if str(cfg.trainer.get("precision", "32")).startswith("16"):
                raise ConfigError(f"approach={self.approach.name} steps its optimizer itself, without the gradient "
                                  f"scaler float16 training needs; use trainer.precision=32 or bf16-mixed")
        device = self.make_trainer(0).strategy.root_device
        self.data = DeviceStream(self.stream, device, shared_head=not self.approach.net.multi_head)
        self.names = [t.name for t in self.stream.tasks]
        # held for the whole run: the device copies of the test sets are made once, not at every evaluation
        limit = cfg.get("eval_max_samples")
        # protocol=validation (hyperparameter search) scores the validation splits: no test split is ever read
        split = "valid" if cfg.get("protocol") == "validation" else "test"
        self.test_sources = [self.data.source(j, split).head(limit) for j in range(len(self.stream))]
        if split == "valid" and cfg.stream.get("valid_from_train"):
            raise ConfigError("protocol=validation scores held-out validation splits, but stream.valid_from_train=true "
                              "makes them copies of the training sets: set stream.valid_from_train=false")
        if split == "valid" and not all(len(s.y) for s in self.test_sources):
            raise ConfigError("protocol=validation scores the tasks' validation splits, but this stream has none "
                              "(stream.pc_valid=0): set stream.pc_valid > 0")
        self.check_validation()

    def table(self, results: dict) -> str:
        return format_table(results)

    @rank_zero_only
    def log_end(self):
        log_run_to_wandb(self.loggers, self.results, self.run_dir, ["acc_matrix.png", *self.approach.figure_files()])

    def make_trainer(self, t: int) -> pl.Trainer:
        cfg = self.cfg
        epochs = self.task_setting(t, "max_epochs", cfg.trainer.max_epochs)
        # the schedule callbacks before the checkpointer (their state goes into its checkpoints), the timer last
        with quiet_lightning():
            return hydra.utils.instantiate(cfg.trainer, max_epochs=epochs, logger=self.loggers or False,
                                           callbacks=[*self.callbacks, self.mid_task, self.timer],
                                           plugins=[AtomicCheckpointIO()], default_root_dir=str(self.run_dir))

    def task_setting(self, t: int, key: str, default):
        """`first_task.<key>` for task 1 where it is set, else `default` (what every other task uses)."""
        value = self.cfg.first_task[key] if t == 0 else None
        return default if value is None else value

    def check_validation(self):
        needs = [type(cb).__name__ for cb in self.callbacks if getattr(cb, "needs_validation", False)]
        if needs and not any(len(s.y) for s in self.approach.valid_sources(self.data, 0)):
            raise ConfigError(f"{', '.join(needs)} selects on validation loss, but the stream has no validation "
                              f"split (stream.pc_valid=0): set stream.pc_valid > 0 or stream.valid_from_train=true, "
                              f"or use callbacks=default")

    # --- start or resume ----------------------------------------------------------------------------------------
    def start(self) -> int:
        self.acc_rows, self.cl_state, self.step_offset, self.elapsed_before = [], [], 0, 0.0
        self.times = {"train": [], "task_end": [], "eval": [], "io": [], "total": 0.0, "setup": 0.0}
        self.approach.to(self.data.device)
        self.random_init = self.evaluate_row()
        for lg in self.loggers:
            lg.log_hyperparams(config_dict(self.cfg))
        self.times["setup"] = time.perf_counter() - self.t_start  # data, model, random-initialisation row
        self.write_results()  # the random-initialisation row: a run interrupted in task 1 can resume
        return 0

    def restore(self) -> int:
        """Continue from the newest readable checkpoint: a mid-task one of the first unfinished task (its position
        goes to `resume_point`), else the newest task checkpoint (`last_readable`)."""
        run_dir, T = self.run_dir, len(self.stream)
        done = saved = self.previous["tasks_done"]
        mid_path = mid_task_checkpoint(run_dir)
        mid = self.read_or_set_aside(mid_path, MID_TASK_KEYS) if mid_path.exists() else None
        if mid is not None and mid["cl_task_id"] != done:
            remove_quietly(mid_path)  # a leftover of a task that finished after it
            mid = None
        ckpt = mid
        if mid is None:
            done, ckpt = self.last_readable(done)
        prev = self.previous
        self.acc_rows, self.random_init = prev["acc_matrix"], prev["random_init_acc"]
        self.times, self.cl_state = prev["time_s"], prev["memory"]["cl_state_bytes"]
        self.times.setdefault("io", [0.0] * done)  # runs saved before these were measured
        self.times.setdefault("setup", 0.0)
        self.elapsed_before = self.times["total"]
        if mid is not None:
            point = read_resume_point(mid)
            self.step_offset = mid["cl_task_step_offset"]
            continue_logs(self.loggers, mid)
            log.info("resuming %s in task %d of %d from its mid-task checkpoint (epoch %d, after batch %d)",
                     run_dir, done + 1, T, point.epoch + 1, point.batches_done)
            self.resume_point = point
            return done
        if ckpt is None:
            self.step_offset = 0
            continue_logs(self.loggers, None)
            if not saved:  # else last_readable said why
                log.info("resuming %s: no task had finished and no mid-task checkpoint was saved, so task 1 of %d "
                         "starts over (the random-initialisation row is kept)", run_dir, T)
            return 0
        self.approach.load_state_dict(ckpt["state_dict"])
        self.approach.on_load_checkpoint(ckpt)
        self.step_offset = ckpt["cl_step_offset"]
        continue_logs(self.loggers, ckpt)
        log.info("resuming %s at task %d of %d (tasks 1-%d finished)", run_dir, done + 1, T, done)
        return done

    # --- one task -----------------------------------------------------------------------------------------------
    def train_task(self, t: int):
        approach, cfg = self.approach, self.cfg
        resume_point, self.resume_point = self.resume_point, None
        if resume_point is None:
            pl.seed_everything(task_seed(cfg.seed, t), verbose=False)
        approach.task_id, approach.step_offset = t, self.step_offset
        approach.lr = self.task_setting(t, "lr", self.base_lr)
        trainer = self.trainer = self.make_trainer(t)
        approach.batch_size = self.task_setting(t, "batch_size", approach.hparams.batch_size)
        # a batch count cap (debug mode's limit_train_batches) counts mini-batches, also for approaches that take
        # chunks of them per training_step
        chunk = 1 if isinstance(cfg.trainer.get("limit_train_batches"), int) else approach.batches_per_step
        train = TaskBatches(approach.train_sources(self.data, t), approach.batch_size * chunk, shuffle=True,
                            seed=task_seed(cfg.seed, t))
        valid_sources = [s for s in approach.valid_sources(self.data, t) if len(s.y)]
        valid = TaskBatches(valid_sources, approach.hparams.eval_batch_size) if valid_sources else None
        ckpt_path = None
        if resume_point is not None:
            train.start_at(resume_point.epoch, resume_point.batches_done)
            self.mid_task.resume = resume_point
            self.timer.resumed_seconds = resume_point.train_seconds
            ckpt_path = str(mid_task_checkpoint(self.run_dir))
        # the run's own checkpoint (approach settings are dataclasses, which torch's weights-only loader refuses)
        with quiet_lightning():
            trainer.fit(approach, train, valid, ckpt_path=ckpt_path, weights_only=False)
        train.close()  # the next task's data need not share memory with this task's
        if valid is not None:
            valid.close()
        self.step_offset += trainer.global_step

    def finish_task(self, t: int):
        """Evaluate every task, then record the task (`record_task`) and run the protocols' task-end files."""
        t0 = time.perf_counter()
        self.acc_rows.append(self.evaluate_row())
        self.times["eval"].append(time.perf_counter() - t0)
        self.times["train"].append(self.timer.train_seconds)
        self.times["task_end"].append(self.timer.task_end_seconds)
        self.cl_state.append(self.approach.cl_state_bytes())
        self.record_task(t, self.step_offset)
        if self.trainer.is_global_zero:
            remove_quietly(mid_task_checkpoint(self.run_dir))
            for cb in self.callbacks:  # task-end files of a protocol (e.g. the MAS re-implementation's run folder)
                if hasattr(cb, "on_task_evaluated"):
                    cb.on_task_evaluated(self.approach, t, self.acc_rows[-1], self.run_dir)

    def evaluate_row(self) -> list[float]:
        return [self.approach.accuracy(source) for source in self.test_sources]

    # --- files --------------------------------------------------------------------------------------------------
    def build_results(self) -> dict:
        self.times["total"] = self.elapsed_before + time.perf_counter() - self.t_start
        approach = self.approach
        self.results = build_results(
            stream=self.stream.name, approach=approach.name, model=approach.net.name, seed=self.cfg.seed,
            task_names=self.names, acc_rows=self.acc_rows, random_init_acc=self.random_init, time_s=self.times,
            memory={"params": sum(p.numel() for p in approach.net.parameters()), "cl_state_bytes": self.cl_state},
            approach_info=approach.approach_info(), config=config_dict(self.cfg))
        self.results["protocol"] = self.cfg.get("protocol", "test")
        return self.results

    def save_checkpoint(self, t: int):
        self.trainer.save_checkpoint(task_checkpoint(self.run_dir, t))

    @rank_zero_only
    def write_figures(self):
        """The plots, drawn once: at the end of the run, or when it is interrupted."""
        if self.acc_rows:
            write_figures(self.run_dir, self.build_results())
            self.approach.write_figures(self.run_dir)

