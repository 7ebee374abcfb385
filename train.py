"""Entry point: `python train.py [overrides]` (see `python train.py --help`)."""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cl.errors import RunInterrupted, first_cl_error
from cl.options import check_options
from cl.run_dir import RunDirState, resume_command


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = Path(cfg.paths.output_dir)
    state = RunDirState(run_dir, resuming=bool(cfg.get("resume")))
    try:
        check_options(cfg)  # before the heavy imports: a mistyped value is reported in a second or two
        if cfg.get("rl_stream") is not None:  # a continual-RL recipe (experiment=rl_*)
            from rl.loop import run
        else:
            from cl.pipeline import run
        run(cfg)
    except RunInterrupted as e:
        print(f"\ninterrupted by {e}; {resume_command(run_dir)}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once; the newest checkpoint is where it resumes
        print(f"\nstopped at once; {resume_command(run_dir)}", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        err = first_cl_error(e)
        kept = state.settle_failure(str(err) if err is not None else f"{type(e).__name__}: {e}")
        if err is None:
            raise
        where = f" (recorded in {kept}; {resume_command(run_dir)})" if kept else ""
        print(f"\nerror: {err}{where}", file=sys.stderr)  # on its own line, after any progress output
        sys.exit(1)


if __name__ == "__main__":
    main()
