"""cl.outputs.report on synthetic results.json files with known matrices (written by the pipeline's own writer), and once on
two real runs."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from omegaconf import OmegaConf

from cl.outputs.report import (BOUNDS, acc_curves_png, capacity_png, clipped_band, collect, settings, summarize,
                       write_report, _groups)
from cl.outputs.results import build_results, write_results
from tests.conftest import ROOT, compose_config, run_pipeline

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T_975_2 = 4.302653  # Student t quantile 0.975 with 2 degrees of freedom


def write_run(run_dir, *, stream="digits5", model="mlp", approach="sgd", seed=0, final=0.9, T=3, done=None,
              rl=False, approach_info=None, total_s=10.0, cl_bytes=0, config=None) -> dict:
    """A run whose accuracy matrix is `final` everywhere: ACC = LA = final, BWT = forgetting = 0, FWT = final − 0.1.
    `config`: its results.json config (default {"seed": seed})."""
    done = T if done is None else done
    results = build_results(
        stream=stream, approach=approach, model=model, seed=seed, task_names=[f"task{i}" for i in range(T)],
        acc_rows=[[final] * T for _ in range(done)], random_init_acc=[0.1] * T,
        time_s={"train": [1.0] * done, "total": total_s}, memory={"params": 100, "cl_state_bytes": [cl_bytes] * done},
        approach_info=approach_info or {}, config=config or {"seed": seed})
    if rl:
        results["return_matrix"] = [[10 * final] * T for _ in range(done)]
    write_results(run_dir, results)
    return results


def test_mean_and_ci_match_a_hand_computation(tmp_path):
    for seed, (final, total) in enumerate([(0.8, 10.0), (0.9, 20.0), (1.0, 30.0)]):
        write_run(tmp_path / f"seed{seed}", seed=seed, final=final, total_s=total, cl_bytes=3 * 2 ** 20)
    [row] = summarize(collect(tmp_path))
    half_width = T_975_2 * 0.1 / math.sqrt(3)
    assert row["n_seeds"] == 3 and row["seeds"] == [0, 1, 2] and row["unit"] == "percent"
    assert row["acc_mean"] == pytest.approx(90.0) and row["acc_ci95"] == pytest.approx(100 * half_width, rel=1e-6)
    assert row["la_mean"] == pytest.approx(90.0) and row["fwt_mean"] == pytest.approx(80.0)
    assert row["bwt_mean"] == pytest.approx(0.0) and row["bwt_ci95"] == pytest.approx(0.0)
    assert row["time_s_mean"] == pytest.approx(20.0) and row["time_s_ci95"] == pytest.approx(100 * half_width)
    assert row["cl_state_bytes_mean"] == 3 * 2 ** 20 and row["cl_state_bytes_ci95"] == 0
    text = write_report(tmp_path, tmp_path / "report").read_text()
    assert f"| digits5 | mlp | sgd | 3 | {row['group']} | 3 | 0, 1, 2 | 90.00 ± 24.84 |" in text
    assert "| 20.0 ± 24.8 | 3.00 ± 0.00 MiB |" in text


def test_one_seed_shows_the_value_without_an_interval(tmp_path):
    write_run(tmp_path, final=0.9)
    [row] = summarize(collect(tmp_path))
    assert row["n_seeds"] == 1 and row["acc_mean"] == pytest.approx(90.0) and row["acc_ci95"] is None
    assert "| 90.00 (n=1) |" in write_report(tmp_path, tmp_path / "report").read_text()


def test_groups_split_by_stream_model_approach_and_task_count(tmp_path):
    write_run(tmp_path / "a0", seed=0)
    write_run(tmp_path / "a1", seed=1)
    write_run(tmp_path / "b", approach="ewc")
    write_run(tmp_path / "c", model="alexnet")
    write_run(tmp_path / "d", stream="mnist5")
    write_run(tmp_path / "e", T=5)
    rows = summarize(collect(tmp_path))
    assert [(r["stream"], r["model"], r["approach"], r["tasks"], r["n_seeds"]) for r in rows] == [
        ("digits5", "alexnet", "sgd", 3, 1), ("digits5", "mlp", "ewc", 3, 1), ("digits5", "mlp", "sgd", 3, 2),
        ("digits5", "mlp", "sgd", 5, 1), ("mnist5", "mlp", "sgd", 3, 1)]
    with open(write_report(tmp_path, tmp_path / "out").parent / "report.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 5 and {"acc_mean", "acc_ci95", "cl_state_bytes_mean", "n_seeds"} <= set(table[0])
    assert table[2]["n_seeds"] == "2" and float(table[2]["acc_mean"]) == pytest.approx(90.0)


def test_incomplete_and_failed_runs_are_listed_not_averaged(tmp_path):
    sweep = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    write_run(sweep / "0", seed=0, final=0.8)
    write_run(sweep / "1", seed=1, final=1.0)
    write_run(sweep / "2", seed=2, final=0.0, done=1)  # interrupted
    write_run(sweep / "3", seed=3, final=0.0, done=2)
    (sweep / "3" / "failed.txt").write_text("2026-01-01T12:03:00 error: loss is NaN\n")
    (sweep / "4").mkdir()
    (sweep / "4" / "failed.txt").write_text("2026-01-01T12:04:00 error: out of memory\n")
    write_run(sweep / "5", seed=5, final=0.9)  # failed once, then completed by a resume: complete, as cl/run/sweep.py has it
    (sweep / "5" / "failed.txt").write_text("2026-01-01T12:05:00 error: killed\n")
    [row] = summarize(collect(tmp_path))
    assert row["n_seeds"] == 3 and row["seeds"] == [0, 1, 5] and row["acc_mean"] == pytest.approx(90.0)
    text = write_report(tmp_path, tmp_path / "report").read_text()
    assert "6 runs (3 complete, 1 incomplete, 2 failed) in 1 groups." in text
    listed = text.split("## Incomplete and failed runs")[1].split("## Figures")[0]
    assert "`multirun/2026-01-01/12-00-00/2`: digits5 mlp sgd seed 2, 1 of 3 tasks\n" in listed
    assert "`multirun/2026-01-01/12-00-00/3`: digits5 mlp sgd seed 3, 2 of 3 tasks; failed: " \
           "2026-01-01T12:03:00 error: loss is NaN" in listed
    assert "`multirun/2026-01-01/12-00-00/4`: no results.json; failed: 2026-01-01T12:04:00 error: out of memory" \
           in listed
    assert "`multirun/2026-01-01/12-00-00/5`: complete (resumed after a failure); failed.txt: " \
           "2026-01-01T12:05:00 error: killed" in listed


def test_a_run_found_twice_counts_once(tmp_path):
    run_dir = tmp_path / "outputs" / "run"
    write_run(run_dir, seed=0)
    wandb_files = run_dir / "wandb" / "offline-run-20260101_120000-abc" / "files"
    wandb_files.mkdir(parents=True)
    shutil.copy(run_dir / "results.json", wandb_files / "results.json")
    write_run(tmp_path / "outputs" / "other", seed=1)
    runs = collect(tmp_path)
    assert sorted(r["run_dir"].name for r in runs) == ["other", "run"]
    assert summarize(runs)[0]["n_seeds"] == 2


def test_rl_runs_are_shown_as_ratios(tmp_path):
    write_run(tmp_path / "s0", stream="minatar3", model="minatar_cnn", seed=0, final=0.5, rl=True)
    write_run(tmp_path / "s1", stream="minatar3", model="minatar_cnn", seed=1, final=0.7, rl=True)
    unknown = write_run(tmp_path / "s2", stream="minatar3", model="minatar_cnn", seed=2, final=0.6, rl=True)
    unknown["acc_matrix"][2][0] = None  # a game whose normalization is undefined, as rl/loop.py stores it
    unknown["metrics"]["acc"] = None
    (tmp_path / "s2" / "results.json").write_text(json.dumps(unknown))
    [row] = summarize(collect(tmp_path))
    assert row["unit"] == "ratio" and row["n_seeds"] == 3
    assert row["acc_n"] == 2 and row["acc_mean"] == pytest.approx(0.6)  # not ×100, the null left out
    assert row["la_mean"] == pytest.approx(0.6) and row["la_n"] == 3
    text = write_report(tmp_path, tmp_path / "report").read_text()
    assert "| 0.600 ± 1.271 (n=2) |" in text and "| 0.600 ± 0.248 |" in text
    assert "ACC¹" in text and "¹ Normalized returns as plain ratios (not ×100)" in text


def test_plots_exist_and_are_pngs(tmp_path):
    bits = {"fc1 784→100": {"module": "fc1", "capacity": 0.25, "mean_bits": 5.0, "histogram": [1, 2]},
            "fc2 100→10": {"module": "fc2", "capacity": 0.5, "mean_bits": 10.0, "histogram": [2, 1]}}
    for seed in (0, 1):
        write_run(tmp_path / f"blip{seed}", approach="blip", seed=seed,
                  approach_info={"capacity": 0.3, "capacity_per_task": [0.1, 0.2, 0.3], "bits_per_layer": bits})
        write_run(tmp_path / f"sgd{seed}", seed=seed)
    write_run(tmp_path / "rl", stream="minatar3", model="minatar_cnn", approach="blip", rl=True,
              approach_info={"capacity": 0.4, "capacity_per_layer": {"conv1": 0.8, "fc1": 0.3}})
    out = tmp_path / "report"
    text = write_report(tmp_path, out).read_text()
    names = ["acc_matrix_digits5_mlp_blip.png", "acc_matrix_digits5_mlp_sgd.png", "acc_after_each_task_digits5_mlp.png",
             "capacity_digits5_mlp.png", "acc_matrix_minatar3_minatar_cnn_blip.png",
             "acc_after_each_task_minatar3_minatar_cnn.png", "capacity_minatar3_minatar_cnn.png"]
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
        assert f"- [{name}]({name})" in text
    assert sorted(p.name for p in out.glob("*.png")) == sorted(names)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "cl.outputs.report", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_cli_writes_the_report_and_prints_one_line(tmp_path):
    write_run(tmp_path / "s0", seed=0)
    write_run(tmp_path / "s1", seed=1, done=2)
    done = _cli(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"2 runs (1 complete, 1 incomplete, 0 failed) in 1 groups → {tmp_path}/report/report.md\n"
    assert (tmp_path / "report" / "report.md").exists() and (tmp_path / "report" / "report.csv").exists()


def test_cli_on_a_folder_without_results_exits_2_with_one_line(tmp_path):
    done = _cli(tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "no results.json" in done.stderr
    assert not (tmp_path / "report").exists()


def test_report_on_two_real_runs(tmp_path):
    for seed in (0, 1):
        run_pipeline(["approach=sgd", "debug=default", f"seed={seed}"], tmp_path / f"s{seed}")
    out = write_report(tmp_path, tmp_path / "report")
    [row] = summarize(collect(tmp_path))
    assert (row["stream"], row["approach"], row["n_seeds"], row["seeds"]) == ("digits5", "sgd", 2, [0, 1])
    assert 0 <= row["acc_mean"] <= 100 and row["acc_ci95"] is not None and row["time_s_mean"] > 0
    assert f"| digits5 | mlp | sgd | 5 | {row['group']} | 2 | 0, 1 |" in out.read_text()


# --- a group is every setting but the seed ---------------------------------------------------------------------------
def resolved_config(overrides: list[str], run_dir) -> dict:
    """The config a run of `python train.py <overrides>` in `run_dir` records in results.json (cl.run.supervised's
    config_dict, without importing the pipeline)."""
    cfg = compose_config(overrides, run_dir)
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in cfg if k != "hydra"}


def write_configured_run(run_dir, overrides: list[str], *, seed=0, **kwargs) -> dict:
    config = resolved_config([*overrides, f"seed={seed}"], run_dir)
    approach = config["approach"]["name"]
    return write_run(run_dir, stream=config["stream"]["name"], model=config["model"]["name"], approach=approach,
                     seed=seed, T=len(config["stream"].get("tasks") or [0] * 5), config=config, **kwargs)


def table_lines(text: str) -> list[str]:
    return [line for line in text.split("## Results")[1].split("## Incomplete")[0].splitlines() if line.startswith("|")]


def test_seeds_of_one_setting_are_one_group_whatever_their_dirs_loggers_and_data_locations(tmp_path):
    # er: stream.seed and approach.seed follow the seed; run_name, run_tags, paths, logger dirs differ by run
    write_configured_run(tmp_path / "a", ["approach=er"], seed=0, final=0.8)
    write_configured_run(tmp_path / "b", ["approach=er", "logger=[csv,tensorboard]", "resume=true"], seed=1)
    write_configured_run(tmp_path / "c", ["approach=er", "paths.data_dir=/elsewhere", "checkpoint_every_n_steps=50"],
                         seed=2, final=1.0)
    [row] = summarize(collect(tmp_path))
    assert row["n_seeds"] == 3 and row["seeds"] == [0, 1, 2] and row["distinct"] == {} and not row["duplicates"]
    assert row["acc_mean"] == pytest.approx(90.0)
    assert "seed" not in row["settings"] and "paths" not in row["settings"] and "logger" not in row["settings"]
    assert "seed" not in row["settings"]["approach"] and "data_dir" not in row["settings"]["stream"]


def test_a_seed_key_set_apart_from_the_run_seed_is_a_setting():
    run = {"seed": 3, "config": {"seed": 3, "stream": {"seed": 3, "name": "pmnist"}, "approach": {"seed": 7},
                                 "rl_eval": {"seed": 10_000, "gif_frames": 300}, "approach_lr": 5.0}}
    assert settings(run) == {"stream": {"name": "pmnist"}, "approach": {"seed": 7}, "rl_eval": {"seed": 10_000},
                             "approach_lr": 5}


def test_a_short_run_and_a_recipe_are_two_rows_told_apart_by_their_settings(tmp_path):
    # observed: one row "n=2, seeds 0, 0", CL state 6.08 ± 25.50 MiB
    write_configured_run(tmp_path / "short", ["stream=mnist5", "trainer.max_epochs=2",
                                              "model.trunk.hidden_sizes=[400,400]"], final=0.95, cl_bytes=2 ** 20)
    write_configured_run(tmp_path / "recipe", ["experiment=blip_mnist5"], final=0.99, cl_bytes=11 * 2 ** 20)
    rows = summarize(collect(tmp_path))
    assert [(r["stream"], r["approach"], r["tasks"], r["n_seeds"], r["seeds"]) for r in rows] == [
        ("mnist5", "blip", 5, 1, [0]), ("mnist5", "blip", 5, 1, [0])]
    assert rows[0]["group"] != rows[1]["group"]
    by_epochs = {r["distinct"]["trainer.max_epochs"]: r for r in rows}
    short, recipe = by_epochs["2"], by_epochs["200"]
    assert set(short["distinct"]) == {"callbacks.lr_schedule", "model.trunk.hidden_sizes", "stream.valid_from_train",
                                      "trainer.max_epochs"}
    assert short["distinct"]["model.trunk.hidden_sizes"] == "[400,400]"
    assert recipe["distinct"]["model.trunk.hidden_sizes"] == "[1200]"
    assert short["distinct"]["callbacks.lr_schedule"] == "—"
    assert recipe["distinct"]["callbacks.lr_schedule"].startswith("PatienceSchedule(lr_patience=5")
    assert short["cl_state_bytes_ci95"] is None and recipe["cl_state_bytes_mean"] == 11 * 2 ** 20
    text = write_report(tmp_path, tmp_path / "report").read_text()
    header, _, *lines = table_lines(text)
    assert "| group | callbacks.lr_schedule | model.trunk.hidden_sizes | stream.valid_from_train | " \
           "trainer.max_epochs | n | seeds |" in header
    assert len(lines) == 2 and not any("±" in line for line in lines)
    assert any(f"| {short['group']} | — | [400,400] | false | 2 | 1 | 0 | 95.00 (n=1) |" in line for line in lines)
    assert "1.00 MiB (n=1)" in text and "11.00 MiB (n=1)" in text
    groups = json.loads((tmp_path / "report" / "groups.json").read_text())
    assert groups[short["group"]]["run_dirs"] == ["short"] and groups[recipe["group"]]["run_dirs"] == ["recipe"]
    assert groups[recipe["group"]]["settings"]["trainer"]["max_epochs"] == 200


def test_a_sweep_over_lambda_shows_a_column_for_it(tmp_path):
    # observed: `approach=ewc approach.lamb=1,100000` as one row "seeds 0, 0", ACC 81.15 ± 87.04
    sweep = tmp_path / "multirun" / "2026-01-01_12-00-00"
    write_configured_run(sweep / "0", ["stream=mnist5", "approach=ewc", "approach.lamb=1"], final=0.9)
    write_configured_run(sweep / "1", ["stream=mnist5", "approach=ewc", "approach.lamb=100000"], final=0.7)
    rows = summarize(collect(tmp_path))
    assert sorted((r["distinct"]["approach.lamb"], len(r["distinct"]), r["n_seeds"], r["seeds"], r["acc_ci95"])
                  for r in rows) == [("1", 1, 1, [0], None), ("100000", 1, 1, [0], None)]
    acc = {r["distinct"]["approach.lamb"]: r["acc_mean"] for r in rows}
    assert acc == {"1": pytest.approx(90.0), "100000": pytest.approx(70.0)}
    out = tmp_path / "report"
    text = write_report(tmp_path, out).read_text()
    header, _, *lines = table_lines(text)
    assert header.startswith("| stream | model | approach | T | group | approach.lamb | n | seeds | ACC (%) |")
    one, big = (next(r["group"] for r in rows if r["distinct"]["approach.lamb"] == v) for v in ("1", "100000"))
    assert f"| mnist5 | mlp | ewc | 5 | {one} | 1 | 1 | 0 | 90.00 (n=1) |" in lines[0] + lines[1]
    assert f"| mnist5 | mlp | ewc | 5 | {big} | 100000 | 1 | 0 | 70.00 (n=1) |" in lines[0] + lines[1]
    with open(out / "report.csv") as f:
        table = list(csv.DictReader(f))
    assert sorted((r["approach.lamb"], r["group"], r["n_seeds"]) for r in table) == [("1", one, "1"),
                                                                                    ("100000", big, "1")]
    assert sorted(p.name for p in out.glob("acc_matrix_*.png")) == sorted(
        [f"acc_matrix_mnist5_mlp_ewc_{one}.png", f"acc_matrix_mnist5_mlp_ewc_{big}.png"])


def test_a_seed_run_three_times_counts_once_with_a_warning(tmp_path, capsys):
    # observed: three identical seed-0 runs reported as "± 0.00"
    for i, name in enumerate(("first", "second", "third")):
        write_configured_run(tmp_path / name, ["approach=sgd"], final=0.9, total_s=10.0 + i)
    os.utime(tmp_path / "second" / "results.json", (2e9, 2e9))  # the newest
    write_configured_run(tmp_path / "other", ["approach=sgd"], seed=1, final=0.7)
    [row] = summarize(collect(tmp_path))
    assert row["n_seeds"] == 2 and row["seeds"] == [0, 1]
    assert row["time_s_mean"] == pytest.approx((11.0 + 10.0) / 2)  # seed 0 is the newest run, "second"
    [dup] = row["duplicates"]
    assert dup["seed"] == 0 and dup["kept"].endswith("second")
    assert sorted(p.rsplit("/", 1)[-1] for p in dup["left_out"]) == ["first", "third"]
    text = write_report(tmp_path, tmp_path / "report").read_text()
    [warning] = [line for line in text.splitlines() if line.startswith("- warning:")]
    assert f"seed 0 of group {row['group']}" in warning and "3 complete runs" in warning
    assert "kept the newest, `second`" in warning and "`first`" in warning and "`third`" in warning
    assert f"warning: seed 0 of group {row['group']}" in capsys.readouterr().err
    assert f"| {row['group']} | 2 | 0, 1 | 80.00 ± " in text


def test_one_seed_three_times_alone_has_no_interval(tmp_path):
    for i in range(3):
        write_run(tmp_path / f"run{i}", seed=0, final=0.9, total_s=10.0 + i)
    [row] = summarize(collect(tmp_path))
    assert row["n_seeds"] == 1 and row["acc_ci95"] is None and len(row["duplicates"][0]["left_out"]) == 2
    assert f"| {row['group']} | 1 | 0 | 90.00 (n=1) |" in write_report(tmp_path, tmp_path / "report").read_text()


# --- intervals of bounded statistics stay in their range in the plots ------------------------------------------------
def test_clipped_band_cuts_to_the_bounds_and_keeps_nan():
    lower, upper = clipped_band([50.0, 95.0, 3.0, float("nan")], [130.0, 10.0, 1.0, 5.0], BOUNDS)
    assert lower.tolist()[:3] == [0.0, 85.0, 2.0] and upper.tolist()[:3] == [100.0, 100.0, 4.0]
    assert math.isnan(lower[3]) and math.isnan(upper[3])
    lower, upper = clipped_band([0.5], [2.0])  # no bounds (RL's normalized returns)
    assert lower.tolist() == [-1.5] and upper.tolist() == [2.5]


def test_plotted_bands_of_accuracy_and_capacity_stay_within_0_and_100(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    drawn = []
    fill_between, bar = Axes.fill_between, Axes.bar

    def record_fill(self, x, y1, y2=0, **kwargs):
        drawn.append(("band", np.asarray(y1, float), np.asarray(y2, float)))
        return fill_between(self, x, y1, y2, **kwargs)

    def record_bar(self, x, height, *args, yerr=None, **kwargs):
        height, err = np.asarray(height, float), np.asarray(yerr, float)
        below, above = (err, err) if err.ndim < 2 else err  # symmetric, or (below, above)
        drawn.append(("bar", height - below, height + above))
        return bar(self, x, height, *args, yerr=yerr, **kwargs)

    monkeypatch.setattr(Axes, "fill_between", record_fill)
    monkeypatch.setattr(Axes, "bar", record_bar)
    bits = {"fc1 8→10": {"module": "fc1", "capacity": 0.0, "mean_bits": 0.0, "histogram": [1]}}
    for seed, (final, cap) in enumerate([(0.05, 0.02), (1.0, 0.95)]):  # far apart: a CI wider than the range
        write_run(tmp_path / f"s{seed}", approach="blip", seed=seed, final=final,
                  approach_info={"capacity": cap, "capacity_per_task": [cap / 3, cap / 2, cap],
                                 "bits_per_layer": {k: {**v, "capacity": cap} for k, v in bits.items()}})
    groups = _groups(collect(tmp_path))
    acc_curves_png(groups)
    capacity_png(groups)
    assert [kind for kind, _, _ in drawn] == ["band", "band", "bar"]
    for _, lower, upper in drawn:
        assert np.all(lower >= 0) and np.all(upper <= 100) and np.all(lower <= upper)
    assert drawn[0][1].min() == 0 and drawn[0][2].max() == 100  # the unclipped band would pass both ends


def test_figures_draw_without_warnings(tmp_path):
    write_configured_run(tmp_path / "a", ["approach=ewc", "approach.lamb=1"])
    write_configured_run(tmp_path / "b", ["approach=ewc", "approach.lamb=100000"])
    bits = {"fc1 784→400": {"module": "fc1", "capacity": 0.3, "mean_bits": 6.0, "histogram": [1]}}
    info = {"capacity": 0.3, "capacity_per_task": [0.1, 0.1, 0.2, 0.2, 0.3], "bits_per_layer": bits}
    write_configured_run(tmp_path / "short", ["stream=mnist5", "trainer.max_epochs=2",
                                              "model.trunk.hidden_sizes=[400,400]"], approach_info=info)
    write_configured_run(tmp_path / "recipe", ["experiment=blip_mnist5"], approach_info=info)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Tight layout not applied" under a legend of long settings
        out = write_report(tmp_path, tmp_path / "report").parent
    assert (out / "capacity_mnist5_mlp.png").exists() and len(list(out.glob("acc_matrix_*.png"))) == 4
