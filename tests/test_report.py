"""cl.report on synthetic results.json files with known matrices (written by the pipeline's own writer), and once on
two real runs."""
from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys

import pytest

from cl.report import collect, summarize, write_report
from cl.results import build_results, write_results
from tests.conftest import ROOT, run_pipeline

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T_975_2 = 4.302653  # Student t quantile 0.975 with 2 degrees of freedom


def write_run(run_dir, *, stream="digits5", model="mlp", approach="sgd", seed=0, final=0.9, T=3, done=None,
              rl=False, approach_info=None, total_s=10.0, cl_bytes=0) -> dict:
    """A run whose accuracy matrix is `final` everywhere: ACC = LA = final, BWT = forgetting = 0, FWT = final − 0.1."""
    done = T if done is None else done
    results = build_results(
        stream=stream, approach=approach, model=model, seed=seed, task_names=[f"task{i}" for i in range(T)],
        acc_rows=[[final] * T for _ in range(done)], random_init_acc=[0.1] * T,
        time_s={"train": [1.0] * done, "total": total_s}, memory={"params": 100, "cl_state_bytes": [cl_bytes] * done},
        approach_info=approach_info or {}, config={"seed": seed})
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
    assert "| digits5 | mlp | sgd | 3 | 3 | 0, 1, 2 | 90.00 ± 24.84 |" in text
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
    write_run(sweep / "5", seed=5, final=0.9)  # failed once, then completed by a resume: complete, as cl/sweep.py has it
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
    return subprocess.run([sys.executable, "-m", "cl.report", *map(str, args)], cwd=ROOT, capture_output=True,
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
    assert "| digits5 | mlp | sgd | 5 | 2 | 0, 1 |" in out.read_text()
