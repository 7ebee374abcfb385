"""One report over many runs — a run dir, a Hydra sweep, W&B offline folders — so that seeds are compared with a
confidence interval instead of by eye:

    python -m cl.outputs.report <run or sweep dir> [--out DIR]        (default out: <dir>/report)

Every `results.json` below the dir is read once (a copy with the same content, e.g. in `wandb/offline-run-*/files/`,
is the same run). The complete runs are grouped by every setting but the seed (their resolved `config` without the
keys of NOT_SETTINGS; a short hash names each group) and summarized as mean ± 95 % CI half-width over the group's
seeds, one run per seed; groups that the table would show alike get a column per setting that tells them apart.
Incomplete and failed runs (`failed.txt`) are listed, never averaged in. Writes report.md, report.csv, groups.json
and the figures (docs/report.md)."""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy import stats

from cl.errors import CLError
from cl.outputs.metrics import acc
from cl.outputs.results import RESULTS_FILE, acc_matrix_png, atomic_write, figure_png, pyplot
from cl.run.run_dir import FAILED_FILE, recorded_failure

REQUIRED = {"stream", "approach", "model", "seed", "task_names", "acc_matrix", "metrics", "time_s", "memory",
            "approach_info", "tasks_done", "complete"}
# the accuracy-like statistics: (key in results["metrics"], label, unit of a supervised run)
ACC_STATS = (("acc", "ACC", "%"), ("bwt", "BWT", "pp"), ("fwt", "FWT", "pp"), ("forgetting", "forgetting", "pp"),
             ("la", "LA", "%"))
ACC_KEYS = tuple(k for k, _, _ in ACC_STATS)
STATS = ACC_KEYS + ("time_s", "cl_state_bytes")
GROUP = ("stream", "model", "approach", "tasks")
# config keys (dotted paths; a key drops its whole subtree) that say where a run lives, how it is logged or shown,
# or whether it resumed, not what it trained: runs that differ only in these are seeds of one group. The seed itself
# is left out too: `seed`, and any key named `seed` deeper down that holds the run's seed (conf/ sets stream.seed and
# approach.seed to ${seed}); a `seed` key set apart from the run's seed is a setting.
NOT_SETTINGS = frozenset({
    "hydra", "paths", "logger", "run_name", "run_group", "run_tags", "resume", "checkpoint_every_n_steps",
    "stream.data_dir", "stream.download",  # where the data are read from, and whether a missing copy is fetched
    "callbacks.progress_bar", "callbacks.task_files",  # the progress display; the MAS re-implementation's files
    "trainer.enable_model_summary", "trainer.enable_checkpointing", "trainer.log_every_n_steps",
    "rl_eval.gif_frames"})  # frames of the RL GIF matrix
BOUNDS = (0.0, 100.0)  # the range of an accuracy or a capacity in %: their plotted intervals are cut to it


def collect(root: Path) -> list[dict]:
    """Every distinct results.json below `root`, with `run_dir` (a Path) added. Run dirs come before W&B folders,
    so that a run saved in both is kept under its run dir."""
    paths = sorted(Path(root).rglob(RESULTS_FILE), key=lambda p: ("wandb" in p.parts, len(p.parts), str(p)))
    runs, seen = [], set()
    for path in paths:
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
            continue
        if not isinstance(run, dict) or not REQUIRED <= set(run):
            print(f"skipped {path}: not a run's results.json", file=sys.stderr)
            continue
        content = json.dumps(run, sort_keys=True)
        if content not in seen:
            seen.add(content)
            runs.append({**run, "run_dir": path.parent})
    return runs


def failed_runs(root: Path) -> dict[Path, str]:
    """Run dir → the error line of its failed.txt, for every failed.txt below `root`."""
    return {path.parent: recorded_failure(path.parent) for path in sorted(Path(root).rglob(FAILED_FILE))}


def is_rl(run: dict) -> bool:
    """RL runs hold normalized returns in acc_matrix (shown as ratios, not ×100)."""
    return "return_matrix" in run


def matrix(run: dict) -> np.ndarray:
    """The finished rows of acc_matrix as floats, null (an RL game's undefined normalization) as NaN."""
    return np.array([[np.nan if v is None else v for v in row] for row in run["acc_matrix"]], dtype=float)


def acc_after_each_task(run: dict) -> list[float]:
    """ACC after task t (mean of row t over the tasks seen so far), for every finished task."""
    R = matrix(run)
    return [acc(R[:t + 1, :t + 1]) for t in range(len(R))]


def mean_ci(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, 95 % CI half-width t_{0.975,n−1}·s/√n (None for n < 2) and n, over the values that are known."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    n = len(v)
    if n < 2:
        return (float(v[0]) if n else None), None, n
    return float(v.mean()), float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / np.sqrt(n)), n


def _raw(run: dict, key: str) -> float | None:
    if key == "time_s":
        return run["time_s"].get("total")
    if key == "cl_state_bytes":
        per_task = run["memory"].get("cl_state_bytes") or [None]
        return per_task[-1]
    return run["metrics"].get(key)


def _plain(value):
    """A config value as it is compared and hashed: 5000.0 is 5000 (an override typed as an int or as a float)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def settings(run: dict) -> dict:
    """What the run trained: its resolved config (results.json `config`) without the keys of NOT_SETTINGS and
    without the seed."""
    seed = run["seed"]

    def keep(node, path: str):
        if not isinstance(node, dict):
            return _plain(node)
        kept = {}
        for key, value in node.items():
            dotted = f"{path}{key}"
            follows_seed = key == "seed" and (not path or type(value) is type(seed) and value == seed)
            if dotted not in NOT_SETTINGS and not follows_seed:
                kept[key] = keep(value, dotted + ".")
        return kept

    return keep(run.get("config") or {}, "")


def group_hash(run: dict) -> str:
    """7 hex digits naming the run's group: stream, model, approach, T and every setting but the seed."""
    ident = {"stream": run["stream"], "model": run["model"], "approach": run["approach"],
             "tasks": len(run["task_names"]), "settings": settings(run)}
    return hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:7]


def _mtime(run: dict) -> float:
    try:
        return (Path(run["run_dir"]) / RESULTS_FILE).stat().st_mtime
    except (KeyError, TypeError, OSError):
        return 0.0


def _one_per_seed(group: list[dict]) -> tuple[list[dict], list[dict]]:
    """The group's runs, one per seed (sorted by seed): of several complete runs of one seed the newest
    (results.json's modification time; on a tie the first found) is kept. Also the duplicates:
    [{seed, kept, left_out}] with the run dirs as strings."""
    by_seed: dict = {}
    for run in group:
        by_seed.setdefault(run["seed"], []).append(run)
    kept, duplicates = [], []
    for seed in sorted(by_seed, key=str):
        same = by_seed[seed]
        newest = max(range(len(same)), key=lambda i: (_mtime(same[i]), -i))
        kept.append(same[newest])
        if len(same) > 1:
            duplicates.append({"seed": seed, "kept": str(same[newest].get("run_dir")),
                               "left_out": [str(r.get("run_dir")) for i, r in enumerate(same) if i != newest]})
    return sorted(kept, key=lambda r: r["seed"]), duplicates


def _groups_and_duplicates(runs: list[dict]) -> tuple[dict[tuple, list[dict]], dict[tuple, list[dict]]]:
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        if run["complete"]:
            key = (run["stream"], run["model"], run["approach"], len(run["task_names"]), group_hash(run))
            groups.setdefault(key, []).append(run)
    kept, duplicates = {}, {}
    for key in sorted(groups):
        kept[key], duplicates[key] = _one_per_seed(groups[key])
    return kept, duplicates


def _groups(runs: list[dict]) -> dict[tuple, list[dict]]:
    """Complete runs by (stream, model, approach, T, settings hash), one run per seed: runs with different task lists
    or settings cannot be averaged, and one run counted twice would shrink the interval."""
    return _groups_and_duplicates(runs)[0]


_ABSENT = object()


def _differing(values: list, path: tuple = ()) -> list[tuple]:
    """The paths at which the settings `values` differ: into sub-configs that every one has, else the key itself
    (a sub-config that only some have is one path)."""
    if all(v == values[0] for v in values[1:]):
        return []
    if all(isinstance(v, dict) for v in values):
        keys = sorted(set().union(*values))
        return [p for k in keys for p in _differing([v.get(k, _ABSENT) for v in values], (*path, k))]
    return [path]


def _lookup(node, path: tuple):
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return _ABSENT
        node = node[key]
    return node


def show_setting(value) -> str:
    """A setting as the table prints it: a list as [400,400], true/false/null, a sub-config as Name(key=value, …)
    (Name from its _target_), a key the group's config lacks as —."""
    if value is _ABSENT:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        name = str(value.get("_target_", "")).rsplit(".", 1)[-1]
        return f"{name}(" + ", ".join(f"{k}={show_setting(v)}" for k, v in value.items() if k != "_target_") + ")"
    return json.dumps(value, separators=(",", ":"), default=str)


def _distinct(groups: dict[tuple, list[dict]]) -> dict[tuple, dict[str, str]]:
    """Per group, the settings (dotted key → shown value) that tell it apart from the other groups of the same
    stream, model, approach and T; empty for a group that is alone in that."""
    clusters: dict[tuple, list[tuple]] = {}
    for key in groups:
        clusters.setdefault(key[:4], []).append(key)
    distinct = {key: {} for key in groups}
    for keys in clusters.values():
        if len(keys) > 1:
            configs = [settings(groups[key][0]) for key in keys]
            for path in _differing(configs):
                for key, config in zip(keys, configs):
                    distinct[key][".".join(path)] = show_setting(_lookup(config, path))
    return distinct


def summarize(runs: list[dict]) -> list[dict]:
    """One row per group of complete runs (every setting but the seed, one run per seed): stream, model, approach,
    tasks, group (the settings' hash), distinct (the settings that tell it apart from groups of the same stream,
    model, approach and T: dotted key → shown value), settings (the group's config without NOT_SETTINGS and the
    seed), duplicates (seeds found in several runs: [{seed, kept, left_out}]), n_seeds, seeds, unit ("percent" or,
    for RL, "ratio") and, per statistic, <key>_mean, <key>_ci95 (None for n < 2) and <key>_n (seeds where it is
    known), in the table's units."""
    rows = []
    groups, duplicates = _groups_and_duplicates(runs)
    distinct = _distinct(groups)
    for key, group in groups.items():
        rl = is_rl(group[0])
        row = dict(zip(GROUP, key), group=key[4], distinct=distinct[key], settings=settings(group[0]),
                   duplicates=duplicates[key], n_seeds=len(group), seeds=[r["seed"] for r in group],
                   unit="ratio" if rl else "percent")
        for stat in STATS:
            scale = 100 if stat in ACC_KEYS and not rl else 1
            mean, ci, n = mean_ci([_raw(r, stat) for r in group])
            row.update({f"{stat}_mean": None if mean is None else scale * mean,
                        f"{stat}_ci95": None if ci is None else scale * ci, f"{stat}_n": n})
        rows.append(row)
    return rows


def distinct_columns(rows: list[dict]) -> list[str]:
    """The settings that tell groups apart, in first-seen order: the table's extra columns."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row.get("distinct", {}) if k not in columns]
    return columns


def _where_text(run_dir: str, root: Path | None) -> str:
    if root is not None:
        try:
            return _where(Path(run_dir), Path(root))
        except ValueError:
            pass
    return run_dir


def duplicate_warnings(rows: list[dict], root: Path | None = None) -> list[str]:
    """One line per seed found in several complete runs of one group (run dirs relative to `root` when given)."""
    lines = []
    for row in rows:
        for dup in row.get("duplicates", []):
            left_out = ", ".join(f"`{_where_text(d, root)}`" for d in dup["left_out"])
            lines.append(f"seed {dup['seed']} of group {row['group']} ({row['stream']} {row['model']} "
                         f"{row['approach']}) is in {1 + len(dup['left_out'])} complete runs: kept the newest, "
                         f"`{_where_text(dup['kept'], root)}`; left out {left_out}")
    return lines


def _human_bytes(value: float) -> tuple[float, str]:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return value, unit
        value /= 1024
    return value, "TiB"


def _cell(row: dict, stat: str) -> str:
    """mean ± CI in the table's format; n=1: the value alone; fewer known values than seeds: (n=k)."""
    mean, ci, n = row[f"{stat}_mean"], row[f"{stat}_ci95"], row[f"{stat}_n"]
    if mean is None:
        return "—"
    unit = ""
    if stat == "cl_state_bytes":
        scaled, unit = _human_bytes(mean)
        factor = scaled / mean if mean else 1.0
        mean, ci, digits, unit = scaled, None if ci is None else ci * factor, 0 if unit == "B" else 2, f" {unit}"
    else:
        digits = 1 if stat == "time_s" else 3 if row["unit"] == "ratio" else 2
    text = f"{mean:.{digits}f}" + ("" if ci is None else f" ± {ci:.{digits}f}") + unit
    if n == 1 or n < row["n_seeds"]:
        text += f" (n={n})"
    return text


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _table(rows: list[dict], rl: bool) -> list[str]:
    mark = "¹" if rl else ""
    heads = [f"{label}{mark}" + ("" if rl else f" ({unit})") for _, label, unit in ACC_STATS]
    heads += ["wall-clock (s)", "CL state"]
    settings_heads = distinct_columns(rows)
    lines = ["| stream | model | approach | T | group | " + "".join(f"{_md(h)} | " for h in settings_heads) +
             "n | seeds | " + " | ".join(heads) + " |", "|---" * (7 + len(settings_heads) + len(heads)) + "|"]
    for row in rows:
        seeds = ", ".join(str(s) for s in row["seeds"])
        values = "".join(f"{_md(row.get('distinct', {}).get(h, ''))} | " for h in settings_heads)
        lines.append(f"| {row['stream']} | {row['model']} | {row['approach']} | {row['tasks']} | {row['group']} | "
                     f"{values}{row['n_seeds']} | {seeds} | " + " | ".join(_cell(row, s) for s in STATS) + " |")
    return lines


def markdown_tables(rows: list[dict], heading: str | None = "##", root: Path | None = None) -> list[str]:
    """The report's tables of `summarize` rows (supervised, then continual RL), as markdown lines, each under a
    `heading`-level title (None: no titles); the benchmarks publish theirs with it. A seed found in several runs of
    a group is warned of under its table (run dirs relative to `root` when given)."""
    lines = []
    for rl in (False, True):
        subset = [row for row in rows if (row["unit"] == "ratio") == rl]
        if subset:
            if heading:
                lines += [f"{heading} Continual RL" if rl else f"{heading} Results", ""]
            lines += [*_table(subset, rl), ""]
            if rl:
                lines += ["¹ Normalized returns as plain ratios (not ×100): a game's return ÷ its return just after "
                          "its own training; ACC 1 = as good as just after training, BWT −1 = all forgotten.", ""]
            warnings = duplicate_warnings(subset, root)
            if warnings:
                lines += [f"- warning: {w}" for w in warnings] + [""]
    return lines


def _slug(*parts) -> str:
    return "_".join(re.sub(r"[^\w.-]+", "-", str(p)) for p in parts)


def _mean_matrix(group: list[dict]) -> np.ndarray:
    """Entry-wise mean over seeds of the known entries (NaN where no seed knows it)."""
    stack = np.stack([matrix(r) for r in group])
    known = np.isfinite(stack).sum(0)
    return np.where(known > 0, np.nansum(stack, 0) / np.maximum(known, 1), np.nan)


def clipped_band(mean, ci, bounds: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The interval mean ± ci as (lower, upper) arrays, cut to `bounds` (low, high) where given: the plotted
    interval of a bounded statistic (an accuracy, a capacity in %) stays inside its range. NaN stays NaN."""
    mean, ci = np.asarray(mean, dtype=float), np.asarray(ci, dtype=float)
    lower, upper = mean - ci, mean + ci
    if bounds is not None:
        lower, upper = np.clip(lower, *bounds), np.clip(upper, *bounds)
    return lower, upper


def _settings_text(group_id: str, distinct: dict[str, str], limit: int = 40) -> str:
    """The group's hash, and the settings that tell it apart when they are short enough for a legend."""
    text = ", ".join(f"{k}={v}" for k, v in distinct.items())
    return f"{group_id}: {text}" if len(text) <= limit else group_id


def _labels(groups: dict[tuple, list[dict]], distinct: dict[tuple, dict[str, str]]) -> dict[tuple, str]:
    """A legend label per group: its approach, T where the approach ran streams of several lengths, and, where
    groups of the approach differ in other settings, its hash and (when short) those settings."""
    labels = {}
    for key, group in groups.items():
        _, _, approach, T, group_id = key
        several_T = len({k[3] for k in groups if k[2] == approach}) > 1
        parts = [approach] + ([f"T={T}"] if several_T else [])
        if distinct.get(key):
            parts.append(_settings_text(group_id, distinct[key]))
        labels[key] = ", ".join(parts) + f" (n={len(group)})"
    return labels


def mean_matrix_png(group: list[dict], distinct: dict[str, str] | None = None) -> bytes:
    """The accuracy matrix averaged over the group's seeds, drawn as a single run's acc_matrix.png is; `distinct`:
    the settings that tell the group apart from others of its approach, named in the title."""
    first, R = group[0], _mean_matrix(group)
    named = f"; {_settings_text(group_hash(first), distinct)}" if distinct else ""
    approach = f"{first['approach']} ({first['model']}{named})"
    stream = f"{first['stream']}\nmean of {len(group)} seeds"
    if is_rl(first):
        from cl.outputs.rl_plots import normalized_matrix_png

        return normalized_matrix_png(R.tolist(), first["task_names"], f"{approach} on {stream}")
    metrics = {k: mean_ci([r["metrics"].get(k) for r in group])[0] for k in ("acc", "bwt")}
    return acc_matrix_png({"task_names": first["task_names"], "acc_matrix": R.tolist(), "stream": stream,
                           "approach": approach, "metrics": metrics})


def acc_curves_png(groups: dict[tuple, list[dict]], distinct: dict[tuple, dict[str, str]] | None = None) -> bytes:
    """ACC after each task, one line per group (of one stream and model) with its 95 % CI band over seeds (cut to
    0-100 % for accuracies; RL's normalized returns have no bound)."""
    plt = pyplot()

    (stream, model, *_), first = next(iter(groups.items()))
    rl = is_rl(first[0])
    labels = _labels(groups, distinct or {})
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for key, group in groups.items():
        T = key[3]
        curves = np.array([acc_after_each_task(r) for r in group]) * (1 if rl else 100)
        cols = [mean_ci(curves[:, t]) for t in range(T)]
        mean = np.array([np.nan if m is None else m for m, _, _ in cols])
        ci = np.array([np.nan if c is None else c for _, c, _ in cols])
        x = np.arange(1, T + 1)
        line, = ax.plot(x, mean, marker="o", label=labels[key])
        ax.fill_between(x, *clipped_band(mean, ci, None if rl else BOUNDS), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("after training task")
    ax.set_ylabel("mean normalized return on tasks seen (ratio)" if rl else "ACC on tasks seen so far (%)")
    ax.set_title(f"{stream}, {model}: ACC after each task (mean, shaded: 95 % CI over seeds)", fontsize=9)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_png(fig)


def _layer_capacity(info: dict) -> dict[str, float]:
    """BLIP's final capacity per layer: supervised BLIP keeps it in bits_per_layer, the RL BLIP in
    capacity_per_layer."""
    if "bits_per_layer" in info:
        return {layer: v["capacity"] for layer, v in info["bits_per_layer"].items()}
    return dict(info.get("capacity_per_layer", {}))


def capacity_png(groups: dict[tuple, list[dict]], distinct: dict[tuple, dict[str, str]] | None = None) -> bytes:
    """BLIP's capacity curve (capacity used after each task, mean over seeds with a 95 % CI band) beside its final
    capacity per layer (bars with 95 % CI), for the BLIP groups of one stream and model; intervals cut to 0-100 %."""
    plt = pyplot()

    (stream, model, *_), first = next(iter(groups.items()))
    labels = _labels(groups, distinct or {})
    layers = list(_layer_capacity(first[0]["approach_info"]))
    fig, (curve, bars) = plt.subplots(1, 2, figsize=(max(10.0, 1.2 * len(layers) + 7), 4.5), dpi=100,
                                      gridspec_kw={"width_ratios": [1, max(1.0, len(layers) / 4)]})
    width = 0.8 / len(groups)
    for i, (key, group) in enumerate(groups.items()):
        label = labels[key]
        histories = [r["approach_info"].get("capacity_per_task") for r in group]
        if all(histories) and len({len(h) for h in histories}) == 1:
            stats = [mean_ci([100 * h[t] for h in histories]) for t in range(len(histories[0]))]
            x = np.arange(1, len(stats) + 1)
            mean = np.array([m for m, _, _ in stats])
            ci = np.array([0.0 if c is None else c for _, c, _ in stats])
            line, = curve.plot(x, mean, marker="o", label=label)
            curve.fill_between(x, *clipped_band(mean, ci, BOUNDS), color=line.get_color(), alpha=0.2)
        per_layer = [mean_ci([100 * _layer_capacity(r["approach_info"]).get(layer, np.nan) for r in group])
                     for layer in layers]
        mean = np.array([np.nan if m is None else m for m, _, _ in per_layer])
        lower, upper = clipped_band(mean, [0.0 if c is None else c for _, c, _ in per_layer], BOUNDS)
        overall = mean_ci([100 * r["approach_info"]["capacity"] for r in group])[0]
        bars.bar(np.arange(len(layers)) + (i - (len(groups) - 1) / 2) * width, mean, width,
                 yerr=np.nan_to_num([mean - lower, upper - mean]), capsize=3,
                 label=label.replace(" (n=", f": {overall:.1f}% overall (n="))
    curve.set_xlabel("after task")
    curve.set_ylabel("capacity used (% of the trunk's bits)")
    curve.set_title("capacity after each task (band: 95 % CI)", fontsize=9)
    curve.xaxis.get_major_locator().set_params(integer=True)
    curve.grid(alpha=0.3)
    if curve.lines:
        curve.legend(fontsize=8)
    bars.set_xticks(range(len(layers)), layers, rotation=30, ha="right", fontsize=8)
    bars.set_ylabel("capacity used (% of the layer's bits)")
    bars.set_title("per layer, after the last task (bars: 95 % CI)", fontsize=9)
    bars.legend(fontsize=8)
    fig.suptitle(f"{stream}, {model}: BLIP's capacity (mean over seeds)", fontsize=10)
    fig.tight_layout()
    return figure_png(fig)


def _figures(runs: list[dict], out: Path) -> list[str]:
    """Writes every figure into `out`; returns their file names."""
    groups = _groups(runs)
    distinct = _distinct(groups)
    names = []
    by_stream_model: dict[tuple, dict[tuple, list[dict]]] = {}
    for key, group in groups.items():
        stream, model, approach, T, group_id = key
        several_T = len({k[3] for k in groups if k[:3] == key[:3]}) > 1  # one approach on streams of two lengths
        several = sum(k[:4] == key[:4] for k in groups) > 1  # one approach with different settings
        name = (f"acc_matrix_{_slug(stream, model, approach)}{f'_T{T}' if several_T else ''}"
                f"{f'_{group_id}' if several else ''}.png")
        atomic_write(out / name, mean_matrix_png(group, distinct[key]))
        names.append(name)
        by_stream_model.setdefault((stream, model), {})[key] = group
    for (stream, model), subset in by_stream_model.items():
        name = f"acc_after_each_task_{_slug(stream, model)}.png"
        atomic_write(out / name, acc_curves_png(subset, distinct))
        names.append(name)
        blip = {k: g for k, g in subset.items() if all("capacity" in r["approach_info"] for r in g)
                and _layer_capacity(g[0]["approach_info"])}
        if blip:
            name = f"capacity_{_slug(stream, model)}.png"
            atomic_write(out / name, capacity_png(blip, distinct))
            names.append(name)
    return names


def _status(run: dict, failures: dict[Path, str]) -> str:
    """complete wins over failed.txt (a run finished by a resume), as in the sweep's summary (cl/run/sweep.py)."""
    if run["complete"]:
        return "complete"
    return "failed" if run["run_dir"] in failures else "incomplete"


def _where(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path != root else "."


def _unfinished(runs: list[dict], status: list[str], failures: dict[Path, str], root: Path) -> list[str]:
    """The markdown list of the runs left out of the table, and of every failed.txt."""
    listed = []
    for run, st in zip(runs, status):
        if st != "complete":
            error = f"; failed: {failures[run['run_dir']]}" if st == "failed" else ""
            listed.append(f"- `{_where(run['run_dir'], root)}`: {run['stream']} {run['model']} {run['approach']} "
                          f"seed {run['seed']}, {run['tasks_done']} of {len(run['task_names'])} tasks{error}")
    complete_dirs = {r["run_dir"] for r, st in zip(runs, status) if st == "complete"}
    for run_dir, error in failures.items():
        if run_dir in complete_dirs:
            listed.append(f"- `{_where(run_dir, root)}`: complete (resumed after a failure); failed.txt: {error}")
        elif run_dir not in {r["run_dir"] for r in runs}:
            listed.append(f"- `{_where(run_dir, root)}`: no results.json; failed: {error}")
    return sorted(listed)


def _write(root: Path, out: Path) -> tuple[Path, str]:
    root = Path(root)
    if not root.is_dir():
        raise CLError(f"{root} is not a directory")
    runs, failures = collect(root), failed_runs(root)
    if not runs and not failures:
        raise CLError(f"no {RESULTS_FILE} below {root}: nothing to report (give a run dir or a sweep dir)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(runs)
    status = [_status(r, failures) for r in runs]
    with_results = {r["run_dir"] for r in runs}
    n_failed = status.count("failed") + sum(d not in with_results for d in failures)
    summary = (f"{len(runs) + len(failures.keys() - with_results)} runs ({status.count('complete')} complete, "
               f"{status.count('incomplete')} incomplete, {n_failed} failed) in {len(rows)} groups")

    warnings = duplicate_warnings(rows, root)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)

    lines = [f"# Report: {root}", "", f"{summary}.", "",
             "A group is the complete runs of one setting, seeds apart: the same resolved config (results.json "
             "`config`) once the seed, the run dir and paths, the loggers and the other keys that do not change what "
             "is trained are left out (`NOT_SETTINGS` in cl/outputs/report.py; docs/report.md). `group` names it by a hash "
             "of those settings (all of them in groups.json); groups of one stream, model, approach and T get a "
             "column per setting that tells them apart. A seed run twice in a group counts once (the newest run; "
             "warned of below the table). n: the seeds averaged.", "",
             "Per group: mean ± 95 % confidence-interval half-width over its seeds, t₀.₉₇₅,ₙ₋₁ · s / √n "
             "(Student t, s the sample standard deviation); with n = 1 the value alone. BWT divides by T − 1 (GEM), "
             "FWT is against the random initialisation, forgetting is positive when forgotten (docs/metrics.md). "
             "Wall-clock: `time_s.total`. CL state: the bytes the approach keeps between tasks, after the last "
             "task.", ""]
    lines += markdown_tables(rows, root=root)
    lines += ["## Incomplete and failed runs", "", "Not averaged in.", "",
              *(_unfinished(runs, status, failures, root) or ["None."])]
    figures = _figures(runs, out)
    lines += ["", "## Figures", "", *[f"- [{name}]({name})" for name in figures]]
    path = out / "report.md"
    atomic_write(path, "\n".join(lines) + "\n")
    atomic_write(out / "report.csv", _csv(rows))
    atomic_write(out / "groups.json", json.dumps(_groups_json(runs, root), indent=2, default=str) + "\n")
    return path, f"{summary} → {path}"


def _groups_json(runs: list[dict], root: Path) -> dict:
    """Per group hash: stream, model, approach, tasks, the seeds and run dirs averaged, and every setting."""
    return {key[4]: {**dict(zip(GROUP, key)), "seeds": [r["seed"] for r in group],
                     "run_dirs": [_where_text(str(r["run_dir"]), root) for r in group], "settings": settings(group[0])}
            for key, group in _groups(runs).items()}


def _csv(rows: list[dict]) -> str:
    distinct = distinct_columns(rows)
    columns = [*GROUP, "group", *distinct, "n_seeds", "seeds", "unit"] + [f"{s}_{x}" for s in STATS
                                                                          for x in ("mean", "ci95", "n")]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, **{k: row["distinct"].get(k, "") for k in distinct},
                         "seeds": " ".join(str(s) for s in row["seeds"])})
    return buf.getvalue()


def write_report(root: Path, out: Path) -> Path:
    """report.md, report.csv, groups.json and the figures of every run below `root`, into `out`; returns
    report.md's path. A seed found in several runs of a group is warned of on stderr."""
    return _write(root, out)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cl.outputs.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="a run dir or a sweep dir (searched recursively)")
    parser.add_argument("--out", type=Path, help="where to write (default: <dir>/report)")
    args = parser.parse_args(argv)
    try:
        _, summary = _write(args.dir, args.out or args.dir / "report")
    except CLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
