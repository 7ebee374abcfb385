"""Logger factories that need a decision at run time."""
import os


def wandb_logger(**kwargs):
    """A Lightning WandbLogger that runs offline (files under save_dir/wandb, `wandb sync` later) when no API key
    is configured, instead of prompting or failing."""
    from pytorch_lightning.loggers import WandbLogger

    if kwargs.get("offline") is None:
        kwargs["offline"] = not (os.environ.get("WANDB_API_KEY") or _netrc_has_wandb())
    if kwargs["offline"]:
        os.environ.setdefault("WANDB_MODE", "offline")
    return WandbLogger(**kwargs)


def _netrc_has_wandb() -> bool:
    path = os.path.expanduser("~/.netrc")
    return os.path.exists(path) and "api.wandb.ai" in open(path).read()
