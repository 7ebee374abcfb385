"""Entry point: `python train.py [overrides]` (see `python train.py --help`)."""
import sys

import hydra
from omegaconf import DictConfig

from cl.errors import CLError


def first_cl_error(e: BaseException) -> CLError | None:
    """Hydra wraps errors raised while instantiating; find ours to print its one line."""
    while e is not None:
        if isinstance(e, CLError):
            return e
        e = e.__cause__ or e.__context__
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from cl.pipeline import run  # imported here so that --help answers fast

    try:
        run(cfg)
    except Exception as e:
        err = first_cl_error(e)
        if err is None:
            raise
        print(f"\nerror: {err}", file=sys.stderr)  # on its own line, after any progress bar
        sys.exit(1)


if __name__ == "__main__":
    main()
