"""The run's loggers, made to continue across `resume=true`: a resumed run appends to the interrupted run's CSV file,
TensorBoard event folder and W&B run (same id) instead of starting them over, and drops only what was logged
after the checkpoint it resumes from (that part is logged again).

Each logger here can tell how far it has written (`log_position()`, recorded in mid-task checkpoints) and continue
from such a position (`continue_from(position)`, called by the pipeline before anything is logged)."""
from __future__ import annotations

import csv
import os
import shutil
import uuid
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger
from pytorch_lightning.loggers import TensorBoardLogger as LightningTensorBoardLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from cl.run.run_dir import RESULTS_FILE


class _ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv when it starts; a resumed run keeps the first `rows`
    rows of it (those logged before the checkpoint) and appends."""

    def __init__(self, log_dir: str, rows: int):
        self._keep_rows = rows
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.exists():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            kept = [row for _, row in zip(range(self._keep_rows), reader)]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)
        self.metrics_keys = header


class CSVLogger(LightningCSVLogger):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._continue_rows: int | None = None
        self._rows = 0

    def continue_from(self, position: int | None) -> None:
        """Keep the first `position` rows of the existing file (all of them when None) and append after them."""
        self._continue_rows = position if position is not None else _count_rows(self._metrics_path())
        self._rows = self._continue_rows

    def _metrics_path(self) -> str:
        return os.path.join(self.log_dir, ExperimentWriter.NAME_METRICS_FILE)

    @property
    def experiment(self):
        if self._experiment is None and self._continue_rows is not None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(self.log_dir, self._continue_rows)
        return super().experiment

    def log_metrics(self, metrics, step=None):
        super().log_metrics(metrics, step)
        self._rows += 1

    def log_position(self) -> int:
        """Rows in metrics.csv so far (call after save())."""
        return self._rows


def _count_rows(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path, newline="") as f:
        return max(0, sum(1 for _ in csv.reader(f)) - 1)


class TensorBoardLogger(LightningTensorBoardLogger):
    """Events logged after the checkpoint a run resumes from are purged (TensorBoard's own `purge_step`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._next_step = 0

    def log_metrics(self, metrics, step=None):
        super().log_metrics(metrics, step)
        if step is not None:
            self._next_step = max(self._next_step, step + 1)

    def log_position(self) -> int:
        return self._next_step

    def continue_from(self, position: int | None) -> None:
        if position is not None:
            self._kwargs["purge_step"] = position
            self._next_step = position


RUN_ID_FILE = "run_id"


def wandb_logger(resume: bool = False, **kwargs):
    """A Lightning WandbLogger that runs offline (files under save_dir/wandb, `wandb sync` later) when no API key
    is configured, instead of prompting or failing; a resumed run (`resume=true`) continues the same W&B run."""
    from pytorch_lightning.loggers import WandbLogger

    offline_for_want_of_a_key = False
    if kwargs.get("offline") is None:
        kwargs["offline"] = offline_for_want_of_a_key = not (os.environ.get("WANDB_API_KEY") or _netrc_has_wandb())
    if kwargs["offline"]:
        os.environ.setdefault("WANDB_MODE", "offline")
    if offline_for_want_of_a_key:
        # W&B's own lines would say "Run `wandb online`" (which needs the key this machine lacks) and print the run's
        # history: close_loggers says where the run is and how to upload it instead; W&B's warnings and errors stay.
        # (W&B reads this when it first starts in the process; a run's own settings do not reach its terminal output)
        os.environ.setdefault("WANDB_SHOW_INFO", "false")
    id_file = Path(kwargs.get("save_dir") or ".") / "wandb" / RUN_ID_FILE
    if kwargs.get("id") is None:
        if resume and id_file.exists():
            kwargs["id"] = id_file.read_text().strip()
        else:
            kwargs["id"] = uuid.uuid4().hex[:8]  # W&B's own ids are 8 lower-case alphanumerics too
            if int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0:
                id_file.parent.mkdir(parents=True, exist_ok=True)
                id_file.write_text(kwargs["id"] + "\n")
    logger = WandbLogger(**kwargs)
    # Lightning passes `anonymous=None` to wandb.init, which W&B answers with "The anonymous setting has no effect"
    if getattr(logger, "_wandb_init", {}).get("anonymous", False) is None:
        del logger._wandb_init["anonymous"]
    logger.cl_offline_note = "no W&B API key is set" if offline_for_want_of_a_key else None
    return logger


def offline_note(logger) -> str | None:
    """For a W&B run made offline because no API key is set: where it is and how to upload it."""
    note, run = getattr(logger, "cl_offline_note", None), getattr(logger, "_experiment", None)
    if not note or run is None:
        return None
    try:
        where = run.settings.sync_dir
    except Exception:
        return None
    return f"W&B run saved offline ({note}): upload it with `wandb sync {where}`"


def _netrc_has_wandb() -> bool:
    path = os.path.expanduser("~/.netrc")
    return os.path.exists(path) and "api.wandb.ai" in open(path).read()


def log_run_to_wandb(loggers: list, results: dict, run_dir: Path, images: list[str], videos: list[Path] = ()):
    """W&B's view of a finished run: the final metrics as its summary, the accuracy matrix as a table, the plots as
    images, GIFs as videos, results.json and the final checkpoint as artifacts. results.json is also saved among the
    run's files, where `python -m cl.outputs.report` finds it in a W&B export."""
    from pytorch_lightning.loggers import WandbLogger

    from cl.run.checkpointing import task_checkpoint

    for lg in loggers:
        if not isinstance(lg, WandbLogger):
            continue
        import wandb

        run = lg.experiment
        run.summary.update({f"cl/{k}": v for k, v in results["metrics"].items() if v is not None})
        names = results["task_names"]
        run.log({"acc_matrix_table": wandb.Table(columns=["after_task", *names],
                                                 data=[[n, *row] for n, row in zip(names, results["acc_matrix"])])})
        for name in images:
            if (run_dir / name).exists():
                lg.log_image(Path(name).stem, [str(run_dir / name)])
        if videos:
            run.log({f"gifs/{p.stem}": wandb.Video(str(p), format="gif") for p in videos})
        artifact = wandb.Artifact(f"results-{run.id}", type="results")
        artifact.add_file(str(run_dir / RESULTS_FILE))
        run.log_artifact(artifact)
        checkpoint = task_checkpoint(run_dir, results["tasks_done"] - 1)
        if checkpoint.exists():
            model = wandb.Artifact(f"model-{run.id}", type="model", metadata={"tasks_done": results["tasks_done"]})
            model.add_file(str(checkpoint))
            run.log_artifact(model)
        # a copy in the run's files (a link would be "Symlinked 1 file ... call wandb.save again", a warning about
        # a file that is final by now)
        files = Path(run.dir)
        shutil.copyfile(run_dir / RESULTS_FILE, files / RESULTS_FILE)
        run.save(str(files / RESULTS_FILE), base_path=str(files), policy="now")
