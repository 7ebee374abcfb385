"""The run's result files, rewritten atomically after every task: results.json (the contract other parts read),
acc_matrix.csv and acc_matrix.png."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from cl.errors import ConfigError, WriteError
from cl.outputs.metrics import all_metrics, forgetting_per_task
from cl.run.run_dir import RESULTS_FILE


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes | str):
    """Write to a temp file in the same folder, flush it to the disk, then rename it over `path`: readers never see
    a half-written file, and a crash or a full disk mid-write leaves the previous file as it was. The file gets the
    permissions a plain open() would give it (mkstemp's own are 0600). A failed write removes its temp file and
    raises WriteError, one line naming the file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _sync_folder(path.parent)  # the rename itself survives a power cut
    except OSError as e:
        kept = f"the previous {path.name} is unchanged" if path.exists() else "nothing was left half-written"
        raise WriteError(f"could not write {path} ({e.strerror or e}); {kept}") from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform or file system that cannot open folders: the rename is as durable as it gets
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def build_results(*, stream: str, approach: str, model: str, seed: int, task_names: list[str],
                  acc_rows: list[list[float]], random_init_acc: list[float], time_s: dict, memory: dict,
                  approach_info: dict, config: dict) -> dict:
    """`acc_matrix` holds one row per finished task (all T columns); metrics cover the finished tasks."""
    k = len(acc_rows)
    R = np.asarray(acc_rows, dtype=float).reshape(k, len(task_names))[:, :k]
    metrics = all_metrics(R, random_init_acc[:k]) if k else {}
    return {"stream": stream, "approach": approach, "model": model, "seed": seed, "task_names": task_names,
            "acc_matrix": acc_rows, "random_init_acc": random_init_acc, "metrics": metrics, "time_s": time_s,
            "memory": memory, "approach_info": approach_info, "config": config,
            "tasks_done": k, "complete": k == len(task_names),
            "forgetting_per_task": forgetting_per_task(R).tolist() if k else []}


def write_results(run_dir: Path, results: dict):
    run_dir = Path(run_dir)
    atomic_write(run_dir / RESULTS_FILE, json.dumps(results, indent=2))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["after_task"] + results["task_names"])
    w.writerow(["random_init"] + [_cell(a) for a in results["random_init_acc"]])
    for name, row in zip(results["task_names"], results["acc_matrix"]):
        w.writerow([name] + [_cell(a) for a in row])
    atomic_write(run_dir / "acc_matrix.csv", buf.getvalue())


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"  # None: not defined yet (an RL game's normalization)


def write_figures(run_dir: Path, results: dict):
    """The plots (drawn once a run ends or is interrupted: a redraw after every task would cost seconds)."""
    atomic_write(Path(run_dir) / "acc_matrix.png", acc_matrix_png(results))


def read_results(run_dir: Path) -> dict | None:
    """The run's results.json (None when it has none); ConfigError when it cannot be read."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read ({e}); the run in {run_dir} cannot be resumed") from e


def results_until(results: dict, k: int) -> dict:
    """`results` as they stood after task k (k of its tasks done): what a run resumed from task k's checkpoint
    continues from. The rows, times, memory figures and (RL) evaluation curves of later tasks are dropped; the
    metrics are recomputed when the results are next built."""
    cut = dict(results, tasks_done=k, complete=False)
    for key in ("acc_matrix", "return_matrix"):
        if key in cut:
            cut[key] = cut[key][:k]
    cut["time_s"] = {key: v[:k] if isinstance(v, list) else v for key, v in results["time_s"].items()}
    cut["memory"] = dict(results["memory"], cl_state_bytes=results["memory"]["cl_state_bytes"][:k])
    if "curves" in cut:
        cut["curves"] = [c for c in cut["curves"] if c["task"] < k]
    return cut


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed), imported when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig) -> bytes:
    """A finished matplotlib figure as PNG bytes (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return buf.getvalue()


def matrix_png(R: np.ndarray, names: list[str], title: str, vmax: float, digits: int, label: str,
               xlabel: str = "evaluated on task") -> bytes:
    """The annotated heatmap of a T×T matrix (rows: after training task i; NaN cells left blank), colours from 0 to
    `vmax`: the accuracy matrix (%) of a run, and the normalized return matrix of an RL run."""
    plt = pyplot()

    T = len(names)
    # a class-split task is named by its classes (10 shuffled CUB classes: 35 characters): shorten the tick labels and
    # leave them room, or tight_layout gives up and the heatmap shrinks to a few pixels
    labels = [n if len(n) <= 18 else n[:17] + "…" for n in names]
    label_inches = 0.06 * max(map(len, labels))
    fig, ax = plt.subplots(figsize=(1.6 + label_inches + 0.7 * T, 1.2 + label_inches + 0.6 * T), dpi=100)
    im = ax.imshow(R, vmin=0, vmax=vmax, cmap="viridis")
    for i in range(T):
        for j in range(T):
            if np.isfinite(R[i, j]):
                ax.text(j, i, f"{R[i, j]:.{digits}f}", ha="center", va="center", fontsize=8,
                        color="white" if R[i, j] < 0.6 * vmax else "black")
    ax.set_xticks(range(T), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(T), labels, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("after training task")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
    fig.tight_layout()
    return figure_png(fig)


def acc_matrix_png(results: dict) -> bytes:
    names = results["task_names"]
    T = len(names)
    R = np.full((T, T), np.nan)
    for i, row in enumerate(results["acc_matrix"]):
        R[i] = row
    m = results["metrics"]
    title = f"{results['approach']} on {results['stream']}"
    if m:
        title += f"\nACC {100 * m['acc']:.2f}%  BWT {100 * m['bwt']:+.2f} pp"
    return matrix_png(100 * R, names, title, vmax=100, digits=1, label="accuracy (%)")


def format_table(results: dict, width: int | None = None) -> str:
    """The accuracy matrix, a per-task summary and the metrics as plain-text tables (printed at the end of a run).
    The matrix is left out when it is wider than `width` (the terminal's, by default): the per-task summary
    always fits, and acc_matrix.csv / acc_matrix.png hold the whole matrix."""
    names = results["task_names"]
    width = width or shutil.get_terminal_size(fallback=(120, 24)).columns
    w = max(8, max(len(n) for n in names) + 1)
    lines = []
    if w * (len(names) + 1) <= width:
        lines += ["accuracy (%) — rows: after training task, columns: evaluated on task",
                  " " * w + "".join(f"{n:>{w}}" for n in names),
                  f"{'random':<{w}}" + "".join(f"{100 * a:>{w}.2f}" for a in results["random_init_acc"])]
        for name, row in zip(names, results["acc_matrix"]):
            lines.append(f"{name:<{w}}" + "".join(f"{100 * a:>{w}.2f}" for a in row))
        lines.append("")
    R = np.asarray(results["acc_matrix"], dtype=float)
    k = len(R)
    if k:
        forgot = forgetting_per_task(R[:, :k])
        lines.append(f"{'task':<{w}}{'trained (%)':>13}{'final (%)':>11}{'change (pp)':>13}{'forgetting (pp)':>17}")
        for j in range(k):
            lines.append(f"{names[j]:<{w}}{100 * R[j, j]:>13.2f}{100 * R[-1, j]:>11.2f}"
                         f"{100 * (R[-1, j] - R[j, j]):>+13.2f}{100 * forgot[j]:>17.2f}")
        lines.append("(trained: just after training the task; forgetting: best earlier accuracy − final, "
                     "positive = forgot)")
        lines.append("")
    m = results["metrics"]
    labels = {"acc": "ACC (%)", "bwt": "BWT, GEM ÷(T-1) (pp)", "bwt_blip": "BWT, BLIP ÷T (pp)",
              "fwt": "FWT vs random init (pp)", "forgetting": "forgetting (pp)", "la": "LA (%)"}
    lines.append(f"{'metric':<26}{'value':>10}")
    for key, label in labels.items():
        if key in m:
            lines.append(f"{label:<26}{100 * m[key]:>10.2f}")
    t = results["time_s"]
    lines.append(f"{'time (s)':<26}{t['total']:>10.1f}")
    if not lines[0].startswith("accuracy"):
        lines.append(f"(the {len(names)}×{len(names)} accuracy matrix is in acc_matrix.csv and acc_matrix.png)")
    return "\n".join(lines)
