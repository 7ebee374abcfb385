"""Entry point: `python train.py [overrides]` (see `python train.py --help`)."""
import sys

import hydra
from omegaconf import DictConfig

from cl.errors import CLError
from cl.options import check_options


def first_cl_error(e: BaseException) -> CLError | None:
    """Hydra wraps errors raised while instantiating; find ours to print its one line."""
    while e is not None:
        if isinstance(e, CLError):
            return e
        e = e.__cause__ or e.__context__
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        check_options(cfg)  # before the heavy imports: a mistyped value is reported in a second or two
        from cl.pipeline import run

        run(cfg)
    except Exception as e:
        err = first_cl_error(e)
        if err is None:
            raise
        print(f"\nerror: {err}", file=sys.stderr)  # on its own line, after any progress bar
        sys.exit(1)


if __name__ == "__main__":
    main()
