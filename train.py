"""Entry point: `python train.py [overrides]` (see `python train.py --help`)."""
import os
import sys
import traceback
from contextlib import nullcontext
from pathlib import Path

import hydra
from omegaconf import DictConfig, open_dict

from cl.errors import ConfigError, RunInterrupted, first_cl_error
from cl.config.options import check_options
from cl.run.run_dir import (FAILED_FILE, RunDirState, hold_run_dir, release_run_dir, remove_new_sweep_dir, resume_command,
                        run_log, saved_results, with_saved_overrides)
from cl.run.sweep import THREADS_PER_JOB, in_multirun, own_ranks, pin_command_line


def objective(results: dict | None) -> float:
    """What a job returns to Hydra's sweeper (Optuna maximizes it): the final ACC; NaN, which Optuna counts as a
    failed trial, when there is none."""
    acc = ((results or {}).get("metrics") or {}).get("acc")
    return float("nan") if acc is None else float(acc)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    run_dir = Path(cfg.paths.output_dir)
    if "CL_THREADS_PER_JOB" in os.environ:  # a job of a parallel sweep: its share of the cores
        import torch

        torch.set_num_threads(THREADS_PER_JOB)
    sweep_job = in_multirun()
    try:  # a single run holds its dir already (cl.run.run_dir.RunDirGuard); a sweep's job takes its own here
        hold_run_dir(run_dir)
    except ConfigError as e:  # another live run is in this job's dir: it is left alone, the sweep goes on
        print(f"error: {e}", file=sys.stderr)
        if not sweep_job:
            sys.exit(1)
        return objective(None)
    try:
        return run_in(run_dir, cfg, sweep_job)
    finally:
        release_run_dir(run_dir)


def run_in(run_dir: Path, cfg: DictConfig, sweep_job: bool) -> float:
    """The run, in the run dir it holds: what it prints also goes to its train.log; an error is one line (and
    failed.txt where something was saved), an interrupt prints the command that resumes it."""
    if sweep_job:  # a sweep run again into its own dir goes on where it stopped (cl/run/sweep.py)
        previous = saved_results(run_dir)
        if previous and previous.get("complete"):
            print(f"skipped: {run_dir} is complete", flush=True)
            return objective(previous)
        (run_dir / FAILED_FILE).unlink(missing_ok=True)
        if previous and previous.get("tasks_done") and not cfg.resume:
            with open_dict(cfg):
                cfg.resume = True
        pin_command_line(["resume=true"] if cfg.resume else [])
    state = RunDirState(run_dir, resuming=bool(cfg.get("resume")))
    with run_log(run_dir):  # what the run prints also goes to <run dir>/train.log
        try:
            check_options(cfg)  # before the heavy imports: a mistyped value is reported in a second or two
            if cfg.get("rl_stream") is not None:  # a continual-RL recipe (experiment=rl_*)
                from rl.loop import run
            else:
                from cl.run.supervised import run
            with own_ranks() if sweep_job else nullcontext():
                return objective(run(cfg))
        except RunInterrupted as e:
            print(f"\ninterrupted by {e}; {resume_command(run_dir)}", file=sys.stderr)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:  # a second Ctrl-C: stopped at once; the newest checkpoint is where it resumes
            print(f"\nstopped at once; {resume_command(run_dir)}", file=sys.stderr)
            sys.exit(130)
        except Exception as e:
            err = first_cl_error(e)
            kept = state.settle_failure(str(err) if err is not None else f"{type(e).__name__}: {e}", keep=sweep_job)
            if err is None:
                if not sweep_job:
                    raise
                traceback.print_exc()
            hint = "the sweep's summary lists it" if sweep_job else resume_command(run_dir)
            where = f" (recorded in {kept}; {hint})" if kept else ""
            print(f"\nerror: {err if err is not None else e}{where}", file=sys.stderr)
            if not sweep_job:  # in a sweep the next job runs; the sweep's summary lists this one
                sys.exit(1)
            return objective(None)


def report_unknown_names() -> None:
    """A mistyped option or group name (`approach.lamda=5000`, `approach=ewcc`) stops with one `error:` line that
    names the closest valid ones, instead of Hydra's several-line report; any other failure of Hydra's is reported
    by Hydra as before. Hydra composes the config inside its `run_and_report`, which this wraps: a valid command
    line costs nothing, a failed composition is looked into again by cl.config.checks.unknown_name."""
    import hydra._internal.utils as hydra_utils
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    from cl.config.checks import unknown_name

    report = getattr(hydra_utils, "run_and_report", None)
    if report is None:  # another Hydra: its own messages
        return

    def diagnosed(func):
        try:
            return func()
        except ConfigCompositionException:
            line = None
            try:
                args = hydra_utils.get_args_parser().parse_args(sys.argv[1:])
                if GlobalHydra.instance().is_initialized():
                    line = unknown_name(args.overrides, GlobalHydra.instance().config_loader(),
                                        args.config_name or "train")
            except Exception:  # the diagnosis itself failed: Hydra's message
                line = None
            if line is None:
                raise
            remove_new_sweep_dir()  # a sweep stopped before its first job: its dir goes
            print(f"error: {line}", file=sys.stderr)
            sys.exit(1)

    hydra_utils.run_and_report = lambda func: report(lambda: diagnosed(func))


if __name__ == "__main__":
    if not sys.stderr.isatty():  # a log file or a pipe: no colour codes (Optuna's log lines, any colorlog handler)
        os.environ.setdefault("NO_COLOR", "1")
    sys.argv = with_saved_overrides(sys.argv)  # resume=true: the run's own overrides first (cl/run/run_dir.py)
    report_unknown_names()
    main()
