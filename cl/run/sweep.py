"""Hydra multirun sweeps that survive their jobs (light: imported by train.py before torch).

- A job that fails records its error in its run dir (`failed.txt`) and the sweep goes on with the next job;
  `sweep_summary.json` in the sweep dir lists every job with its status, and the sweep exits with 1 when any failed.
- Running the same sweep again into the same sweep dir (`hydra.sweep.dir=<it>`) resumes it: a job whose
  results.json is complete is skipped, one with finished tasks continues from its checkpoint, the others run.
- With `trainer=ddp`, Lightning starts the other ranks by re-running this script with its command line; in a
  multirun that command line is the whole sweep (`-m` and the value lists), which every rank would launch again.
  `pin_command_line` points the ranks at the one job instead: its own overrides and its own run dir, and
  `own_ranks` lets the next job start its own ranks.
"""
from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cl.run.run_dir import recorded_failure, saved_results

SUMMARY_FILE = "sweep_summary.json"
THREADS_PER_JOB = int(os.environ.get("CL_THREADS_PER_JOB", "1"))
# hydra/launcher=local_parallel: as many jobs at once as the cores hold at CL_THREADS_PER_JOB torch threads each
OmegaConf.register_new_resolver("cl_parallel_jobs", lambda: max(1, (os.cpu_count() or 1) // THREADS_PER_JOB),
                                replace=True)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_group(default: str) -> str:
    """A run's W&B group: its sweep (the sweep dir's name) for a sweep's job, else `default`."""
    return Path(HydraConfig.get().sweep.dir).name if in_multirun() else default


OmegaConf.register_new_resolver("cl_sweep_group", sweep_group, replace=True)


def pin_command_line(extra: list[str]) -> None:
    """Make the command line this job's alone (see the module docstring): `train.py <its overrides> <extra>`, with
    Hydra's run dir set to the job's output dir, which Lightning passes to the ranks it starts."""
    hydra_cfg = HydraConfig.get()
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task, *extra]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


# what Lightning's DDP launcher sets in the launching process; with them set, the next Trainer believes its ranks exist
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def own_ranks():
    """Around one job of a sweep: afterwards the job's DDP ranks are gone (they run that job only), so its process
    group is destroyed and the launcher's environment restored, and the next job's Trainer starts ranks of its own."""
    saved = {key: os.environ.get(key) for key in LAUNCHER_ENV}
    try:
        yield
    finally:
        if "torch" in sys.modules:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def job_status(run_dir: Path) -> dict:
    results = saved_results(run_dir)
    error = recorded_failure(run_dir)
    if results and results.get("complete"):
        status = "complete"
    elif error is not None:
        status = "failed"
    else:
        status = "incomplete"
    entry = {"run_dir": str(run_dir), "status": status,
             "tasks_done": results.get("tasks_done", 0) if results else 0,
             "tasks": len(results["task_names"]) if results else None}
    if status == "failed":
        entry["error"] = error
    return entry


class SweepSummary(Callback):
    """Writes `sweep_summary.json` after every job and at the end of the sweep (so a killed sweep keeps one), and
    makes a sweep with a failed job exit with 1."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if getattr(self, "sweep_dir", None) is not None:
            self.write()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        jobs = self.write()
        failed = [j for j in jobs if j["status"] == "failed"]
        done = sum(j["status"] == "complete" for j in jobs)
        print(f"sweep: {len(jobs)} jobs, {done} complete, {len(failed)} failed, {len(jobs) - done - len(failed)} "
              f"incomplete; {self.sweep_dir / SUMMARY_FILE}", flush=True)
        for job in failed:
            print(f"  failed: {job['run_dir']}: {job['error']}", flush=True)
        if failed:
            sys.exit(1)

    def write(self) -> list[dict]:
        job_dirs = sorted((p.parent for p in self.sweep_dir.glob("*/.hydra")), key=_job_order)
        jobs = [job_status(d) for d in job_dirs]
        path = self.sweep_dir / SUMMARY_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"sweep_dir": str(self.sweep_dir), "jobs": jobs}, indent=2))
        tmp.replace(path)
        return jobs


def _job_order(job_dir: Path):
    number = job_dir.name.split("_", 1)[0]
    return (int(number), job_dir.name) if number.isdigit() else (1 << 30, job_dir.name)
