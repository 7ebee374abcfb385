"""What a researcher reads is right: a mistyped name stops with one line naming the closest valid ones; the epoch
lines carry the learning rate, the schedule's patience and the task's ETA; RL runs print plain lines into a log;
third-party lines the user cannot act on stay out; `train.log` in the run dir holds what the run printed."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT, run_cli, run_pipeline

TWO_TASKS = ["debug=default", "logger=[]", "stream.tasks=[[0,1],[2,3]]"]


# --- 4. unknown option and group names ----------------------------------------------------------------------------
@pytest.mark.parametrize("args,expected", [
    (["approach=ewc", "approach.lamda=5000"], "did you mean approach.lamb?"),
    (["approach=ewcc"], "approach=ewcc: no option 'ewcc' in config group approach; did you mean approach=ewc?"),
    (["approch=ewc"], "no config group or key 'approch'; did you mean approach"),
    (["experiment=blip_mnst5"], "did you mean experiment=blip_mnist5"),
    (["hydra/launcher=joblb"], "did you mean hydra/launcher=joblib?"),
    (["callbacks.lr_schedule.lr_patience=3"], "no key 'lr_schedule' in callbacks (callbacks=default); its keys: "
                                              "progress_bar"),
    (["rl_stream.steps_per_task=64"], "rl_stream is a config group this command line does not select"),
    (["-m", "approach=sgd,ewcc"], "approach=ewcc: no option 'ewcc'"),
    (["-m", "approach=sgd,ewc", "approach.lamb=3"], "no key 'lamb' in approach (approach=sgd)"),
])
def test_a_mistyped_name_stops_at_once_with_one_line_naming_the_closest(args, expected, tmp_path):
    """One `error:` line, exit 1, no traceback, and neither torch nor Lightning imported (they take seconds)."""
    argv = ["train.py", *args, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    probe = (f"import runpy, sys\nsys.argv = {argv!r}\n"
             "try:\n    runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit as e:\n"
             "    print('exit', e.code, 'heavy' if {'torch', 'pytorch_lightning'} & set(sys.modules) else 'light')\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert expected in proc.stderr
    assert proc.stdout.split()[-3:] == ["exit", "1", "light"]
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_valid_command_lines_are_left_alone(tmp_path):
    shown = run_cli(["--cfg", "job", "approach=ewc", "approach.lamb=3", "+note=added", "hydra/launcher=local_parallel"])
    assert shown.returncode == 0 and "error" not in shown.stderr, shown.stderr[-2000:]
    assert "lamb: 3" in shown.stdout and "note: added" in shown.stdout
    assert run_cli(["--help"]).returncode == 0


# --- 5. RL progress in a log ----------------------------------------------------------------------------------------
def test_an_rl_run_into_a_pipe_prints_plain_lines(tmp_path):
    done = run_cli(["experiment=rl_minatar_ft", "rl_stream.games=[breakout,asterix]", "rl_stream.steps_per_task=512",
                    "ppo.num_envs=4", "ppo.num_steps=32", "ppo.minibatches=4", "rl_eval.episodes=1",
                    "rl_eval.every_updates=2", "rl_eval.max_steps=50", "rl_eval.gif_frames=0", "logger=[]",
                    f"hydra.run.dir={tmp_path}"], text=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert b"\r" not in done.stdout + done.stderr and b"\x1b" not in done.stdout + done.stderr
    out = (done.stdout + done.stderr).decode()
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("game ")]
    assert len(lines) == 8 and len(out.splitlines()) < 40  # 4 updates of 128 steps in each of 2 games
    assert lines[1].startswith("game 1/2 breakout  update 2/4  steps 256/512") and "steps/s" in lines[1]
    assert "eval breakout" in lines[1] and "game ETA" in lines[1]
    assert lines[-1].startswith("game 2/2 asterix  update 4/4") and "ETA" not in lines[-1]


def test_a_long_game_prints_a_bounded_number_of_lines(capsys):
    from rl.loop import GameProgress

    progress = GameProgress("game 1/1 pong", updates=9765, batch=1024, terminal=False)
    for update in range(1, 9766):
        progress.update(update, 1.5)
    lines = capsys.readouterr().out.splitlines()
    assert 20 <= len(lines) <= 21 and lines[-1].startswith("game 1/1 pong  update 9765/9765  steps 10M/10M")


# --- 6. the epoch lines -------------------------------------------------------------------------------------------
def test_epoch_lines_carry_the_lr_the_patience_and_the_tasks_eta(tmp_path, capsys):
    run_pipeline([*TWO_TASKS, "callbacks=hat_schedule", "trainer.max_epochs=3"], tmp_path / "schedule")
    lines = [line for line in capsys.readouterr().out.splitlines() if "  epoch " in line]
    assert [line.split("  ")[:2] for line in lines] == [[f"task {t}/2", f"epoch {e}/3"] for t in (1, 2)
                                                        for e in (1, 2, 3)]
    first, last = lines[0].split("  "), lines[2].split("  ")
    assert "lr 0.01" in first and "patience 0/5" in first
    assert first[-1].startswith("task ETA ≤ ")  # the schedule may end the task early
    assert not any(part.startswith("task ETA") for part in last)  # the task's last epoch

    run_pipeline([*TWO_TASKS, "approach=sgd", "trainer.max_epochs=2"], tmp_path / "fixed")
    first = next(line for line in capsys.readouterr().out.splitlines() if "  epoch " in line).split("  ")
    assert first[:2] == ["task 1/2", "epoch 1/2"] and "lr 0.01" in first and not any("patience" in p for p in first)
    assert first[-1].startswith("task ETA ") and "≤" not in first[-1]  # fixed epochs: no early end


def test_the_bar_counts_epochs_from_one():
    from cl.callbacks.progress import TaskProgressBar

    bar, shown = TaskProgressBar(), []
    bar._train_progress_bar = SimpleNamespace(set_description=shown.append)
    bar._describe(SimpleNamespace(current_epoch=0, max_epochs=200), SimpleNamespace(task_id=0, n_tasks=5))
    assert shown == ["task 1/5 epoch 1/200"]


def test_the_readme_says_how_long_the_long_recipes_take():
    readme = (ROOT / "README.md").read_text()
    for recipe, minutes in (("blip_mnist5", "12"), ("bcl_dual_pmnist", "24"), ("gem_pmnist", "2")):
        assert f"`{recipe}` (~{minutes} min on 2 CPU cores)" in readme


# --- 8. third-party lines -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_an_offline_wandb_run_prints_no_misleading_lines(tmp_path):
    home = tmp_path / "wandb_home"  # no API key, no W&B settings of this machine's: offline by the project's choice
    env = {**{k: None for k in os.environ if k.startswith("WANDB_")}, "HOME": str(home), "WANDB_DIR": str(home),
           "WANDB_CONFIG_DIR": str(home / "config"), "WANDB_CACHE_DIR": str(home / "cache"),
           "WANDB_DATA_DIR": str(home / "data")}
    done = run_cli([*TWO_TASKS, "logger=wandb", f"hydra.run.dir={tmp_path / 'run'}"], env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout + done.stderr
    for line in ("The anonymous setting has no effect", "Symlinked 1 file", "Run `wandb online`"):
        assert line not in out, line
    assert f"upload it with `wandb sync {tmp_path / 'run' / 'wandb'}/offline-run-" in done.stdout
    files = next((tmp_path / "run" / "wandb").glob("offline-run-*/files"))
    assert (files / "results.json").read_text() == (tmp_path / "run" / "results.json").read_text()


@pytest.mark.slow
def test_an_optuna_search_in_a_log_has_no_plugin_lines_and_no_colour_codes(tmp_path):
    done = run_cli(["-m", "approach=ewc", "hparams_search=ewc_lambda", "hydra.sweeper.n_trials=1", *TWO_TASKS,
                    "validation_tasks=2", f"hydra.sweep.dir={tmp_path}"])
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout + done.stderr
    assert "A new study created" in out  # Optuna's own line stays, uncoloured
    assert "alembic" not in out and "\x1b" not in out


def test_lightning_warns_of_nothing_the_user_cannot_act_on(tmp_path):
    importlib.import_module("cl.run.supervised")  # its filters are set at import, before this test's own

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_pipeline([*TWO_TASKS, "approach=sgd", "stream.pc_valid=0"], tmp_path)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "val_dataloader" in m or "logging interval" in m], messages


# --- 9. train.log -------------------------------------------------------------------------------------------------
def cut_to_first_task(run_dir: Path) -> None:
    """results.json as if the run had been killed after its first task (its checkpoint is there)."""
    whole = json.loads((run_dir / "results.json").read_text())
    cut = dict(whole, acc_matrix=whole["acc_matrix"][:1], tasks_done=1, complete=False)
    cut["time_s"] = {k: v[:1] if isinstance(v, list) else v for k, v in whole["time_s"].items()}
    cut["memory"] = dict(whole["memory"], cl_state_bytes=whole["memory"]["cl_state_bytes"][:1])
    (run_dir / "results.json").write_text(json.dumps(cut))


@pytest.mark.slow
def test_train_log_holds_what_the_run_printed_and_a_resume_appends(tmp_path):
    run_dir = tmp_path / "run"
    first = run_cli([*TWO_TASKS, "approach=sgd", f"hydra.run.dir={run_dir}"])
    assert first.returncode == 0, first.stderr[-2000:]
    log = (run_dir / "train.log").read_text()
    for line in first.stdout.splitlines():  # the epoch lines, the accuracy matrix, the per-task table, ...
        assert line in log.splitlines(), line
    assert sum(line.startswith("task ") and "  epoch " in line for line in log.splitlines()) == 2
    assert "accuracy (%)" in log and "forgetting (pp)" in log

    cut_to_first_task(run_dir)
    resumed = run_cli(["resume=true", f"hydra.run.dir={run_dir}"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = (run_dir / "train.log").read_text()
    assert again.startswith(log)  # the first run's part is kept, the resume's appended
    appended = again[len(log):].splitlines()
    assert "resuming" in again[len(log):] and [line.split("  ")[:2] for line in appended
                                               if "  epoch " in line] == [["task 2/2", "epoch 1/1"]]
    assert "accuracy (%)" in again[len(log):]


def test_train_log_holds_the_error_of_a_failed_run_that_keeps_its_dir(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text('{"kept": true}')
    failed = run_cli(["approach.lr=abc", f"hydra.run.dir={run_dir}"])
    error = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert failed.returncode == 1 and len(error) == 1
    assert error[0] in (run_dir / "train.log").read_text().splitlines()


def test_train_log_gets_a_bar_as_last_shown_and_the_lines_a_terminals_bar_stands_for(tmp_path, capsys):
    from cl.run.run_dir import run_log, to_run_log

    with run_log(tmp_path):
        print("\rtask 1/2 epoch 1/3:   0%|\x1b[32m |\rtask 1/2 epoch 3/3: 100%| 4/4\r\n", end="", file=sys.stderr)
        to_run_log("task 1/2  epoch 3/3  train/loss 0.5000  0.01 s")
        print("accuracy (%)")
    assert (tmp_path / "train.log").read_text().splitlines() == [
        "task 1/2 epoch 3/3: 100%| 4/4", "task 1/2  epoch 3/3  train/loss 0.5000  0.01 s", "accuracy (%)"]
    shown = capsys.readouterr()
    assert "train/loss" not in shown.out + shown.err and "accuracy (%)" in shown.out
