"""Continual RL end to end on tiny settings: every approach on the MinAtar stream, the Atari stream's wiring,
BLIP's frozen bits, ft_fix's fixed trunk, and an interrupted run that resumes to the same numbers."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from cl.blip.quant import state_key
from cl.errors import ConfigError, RunInterrupted
from tests.conftest import compose_config, config_options, run_cli

# 3 games × 8 updates of 4 environments × 32 steps (3,072 environment steps): a few seconds per run
TINY = ["rl_stream.steps_per_task=1024", "ppo.num_envs=4", "ppo.num_steps=32", "ppo.minibatches=4",
        "rl_eval.episodes=2", "rl_eval.every_updates=2", "rl_eval.max_steps=150", "rl_eval.gif_frames=4",
        "logger=[]", "seed=3"]
APPROACHES = {"blip": ["rl_approach.fisher_minibatches=4"], "ewc": ["rl_approach.fisher_minibatches=4"],
              "ft": [], "ftfix": []}


def run_rl(overrides: list[str], run_dir) -> dict:
    from rl.loop import run

    return run(compose_config(overrides, run_dir))


def minatar(approach: str) -> list[str]:
    return [f"experiment=rl_minatar_{approach}", *TINY, *APPROACHES[approach]]


def checkpoint(run_dir, t: int) -> dict:
    return torch.load(run_dir / "checkpoints" / f"task_{t}.ckpt", weights_only=False)


def trunk_state(ckpt: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in ckpt["agent"].items() if k.startswith("trunk.")}


@pytest.mark.parametrize("approach", list(APPROACHES))
def test_every_approach_runs_the_minatar_stream(approach, tmp_path):
    results = run_rl(minatar(approach), tmp_path)
    T = len(results["task_names"])
    assert results["complete"] and results["tasks_done"] == T == 3
    raw, norm = np.array(results["return_matrix"]), np.array(results["acc_matrix"], dtype=float)
    assert raw.shape == norm.shape == (T, T)
    positive = np.diag(raw) > 0
    assert np.allclose(np.diag(norm)[positive], 1.0)  # each game normalized by its own post-training return
    assert np.allclose(norm[:, positive], raw[:, positive] / np.diag(raw)[positive])
    # curves: every 2 updates within each game (4 per game here: 3 in training, 1 at its end), seen games only
    assert [len(c["returns"]) for c in results["curves"]] == [1] * 4 + [2] * 4 + [3] * 4
    assert results["env_steps_per_task"] == 1024
    for name in ("results.json", "acc_matrix.csv", "acc_matrix.png", "returns.png", "gifs/gif_matrix.gif"):
        assert (tmp_path / name).stat().st_size > 0
    assert len(list((tmp_path / "gifs").glob("after*.gif"))) == 6  # the lower triangle of the GIF matrix
    assert (tmp_path / "checkpoints" / "task_2.ckpt").exists()


# the default run takes fine-tuning; every Atari recipe (the base one runs BLIP) under -m slow
ATARI_RECIPES = [pytest.param(r, marks=() if r == "rl_atari6_ft" else pytest.mark.slow)
                 for r in config_options("experiment") if r.startswith("rl_atari6")]


@pytest.mark.parametrize("recipe", ATARI_RECIPES)
def test_the_atari_recipes_run_on_real_ale_games(recipe, tmp_path):
    fisher = [] if recipe.endswith(("_ft", "_ftfix")) else ["rl_approach.fisher_minibatches=2"]  # 64 states
    results = run_rl([f"experiment={recipe}", *fisher, "rl_stream.games=[pong,breakout]", "rl_stream.steps_per_task=64",
                      "ppo.num_envs=2", "ppo.num_steps=32", "ppo.minibatches=2", "ppo.epochs=1", "rl_eval.episodes=1",
                      "rl_eval.every_updates=0", "rl_eval.max_steps=40", "rl_eval.gif_frames=2", "logger=[]"], tmp_path)
    assert results["complete"] and results["model"] == "nature_cnn"
    agent = checkpoint(tmp_path, 1)["agent"]
    assert agent["actors.0.weight"].shape == (6, 1024) and agent["actors.1.weight"].shape == (4, 1024)


def test_blip_keeps_the_frozen_bits_of_earlier_games(tmp_path):
    run_rl(minatar("blip")[:1] + TINY + ["rl_stream.games=[breakout,space_invaders]", "rl_approach.F_prior=1e-24",
                                         "rl_approach.fisher_minibatches=4"], tmp_path)
    first, second = checkpoint(tmp_path, 0), checkpoint(tmp_path, 1)
    moved = frozen = 0
    for name in ("0.weight", "0.bias", "3.weight", "3.bias"):
        key = f"quantizer.state.{state_key(name)}"
        bits1, prev1 = first["approach"][f"{key}.bits"], first["approach"][f"{key}.prev"]
        bits2 = second["approach"][f"{key}.bits"]
        value2 = second["agent"][f"trunk.{name}"]
        bound = 6.0 / np.sqrt(max(value2[0].numel(), value2.shape[0])) if name.endswith("weight") else 1.0
        held = bits1 > 0
        # the projection keeps a parameter within one step of its frozen grid: |θ − θ_prev| ≤ bound·2^-b (up to
        # float32 rounding, which matters at 20 bits)
        step = bound * torch.exp2(-bits1[held].double())
        slack = 4 * torch.finfo(torch.float32).eps * prev1[held].double().abs()
        assert ((value2[held].double() - prev1[held].double()).abs() <= step + slack).all(), key
        assert (bits2 >= bits1).all()
        frozen += int(held.sum())
        moved += int((value2[~held] != prev1[~held]).sum())
    assert frozen > 0 and moved > 0  # bits were frozen, and free parameters did learn the second game


def test_ft_fix_leaves_the_trunk_bit_exact(tmp_path):
    run_rl(minatar("ftfix"), tmp_path)
    after_first = trunk_state(checkpoint(tmp_path, 0))
    after_last = checkpoint(tmp_path, 2)
    assert all(torch.equal(after_first[k], v) for k, v in trunk_state(after_last).items())
    heads = [k for k in after_last["agent"] if k.startswith("actors.2")]
    assert heads  # and the last game's heads trained: its return is in the matrix


def test_finetune_changes_the_trunk(tmp_path):
    """The control for the two tests above: without protection the trunk does move."""
    run_rl(minatar("ft")[:1] + TINY + ["rl_stream.games=[breakout,space_invaders]"], tmp_path)
    before, after = trunk_state(checkpoint(tmp_path, 0)), trunk_state(checkpoint(tmp_path, 1))
    assert any(not torch.equal(before[k], after[k]) for k in before)


class SignalAfter:
    """Sends SIGINT to this process at the n-th optimizer step of the approach (mid-game)."""

    def __init__(self, monkeypatch, cls, n: int):
        self.n, self.seen, self.original = n, 0, cls.on_after_optimizer_step
        monkeypatch.setattr(cls, "on_after_optimizer_step", self.hook())

    def hook(self):
        def after(approach):
            self.original(approach)
            self.seen += 1
            if self.seen == self.n:
                os.kill(os.getpid(), signal.SIGINT)
        return after


@pytest.mark.parametrize("approach", ["blip", pytest.param("ewc", marks=pytest.mark.slow)])
def test_resume_mid_stream_gives_the_same_return_matrix(approach, tmp_path, monkeypatch):
    from rl import approaches

    whole = run_rl(minatar(approach), tmp_path / "whole")
    cls = {"blip": approaches.BLIP, "ewc": approaches.OnlineEWC}[approach]
    steps_per_game = 8 * 4 * 4  # updates × epochs × minibatches
    SignalAfter(monkeypatch, cls, steps_per_game + 5)  # in the second game
    with pytest.raises(RunInterrupted):
        run_rl(minatar(approach), tmp_path / "cut")
    monkeypatch.undo()
    resumed = run_rl(minatar(approach) + ["resume=true"], tmp_path / "cut")
    for key in ("return_matrix", "random_init_return", "acc_matrix", "curves", "metrics"):
        assert resumed[key] == whole[key], key


def test_the_base_recipe_runs_blip(tmp_path):
    assert compose_config(["experiment=rl_minatar"], tmp_path).rl_approach._target_ == "rl.approaches.BLIP"


def test_an_rl_stream_without_a_recipe_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="experiment=rl_minatar"):
        run_rl(["rl_stream=minatar3"], tmp_path)


@pytest.mark.parametrize("recipe,game", [("rl_atari6_ft", "KungFuMaster"), ("rl_minatar_ft", "pong")])
def test_an_unknown_game_is_refused_in_one_line(recipe, game, tmp_path):
    with pytest.raises(ConfigError, match=f"no .*game '{game}'"):
        run_rl([f"experiment={recipe}", f"rl_stream.games=[{game}]"], tmp_path)


def test_rl_refuses_several_devices_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="one device"):
        run_rl(minatar("ft") + ["trainer.devices=2"], tmp_path)


@pytest.mark.slow
def test_cli_runs_a_minatar_recipe(tmp_path):
    done = run_cli(minatar("ft") + [f"hydra.run.dir={tmp_path}"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "normalized ACC" in done.stdout and (tmp_path / "results.json").exists()


def test_wandb_gets_the_gif_matrix_as_videos_and_the_plots(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_rl(minatar("ft")[:1] + [o for o in TINY if not o.startswith("logger")] +
           ["rl_stream.games=[breakout,space_invaders]", "logger=wandb"], tmp_path)
    files = next((tmp_path / "wandb").glob("offline-run-*")) / "files"
    videos = sorted(p.name for p in (files / "media" / "videos").rglob("*.gif"))
    assert len(videos) == 4  # 3 cells of the lower triangle + the matrix
    assert list((files / "media" / "images").rglob("*.png"))  # returns.png and the normalized matrix
