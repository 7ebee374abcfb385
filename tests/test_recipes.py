"""Every recipe in conf/experiment/ against the official command it reproduces (docs/recipes.md).

TABLE holds, per recipe, the command (repository, file, line), the official value of every setting the recipe pins,
each with its source as a `# repo path:line` comment, and the recipe's remaining differences: `deviations` (a config
key whose value differs from the official one: our value and the reason) and `behaviours` (code-level differences with
no config key, labelled as in docs/recipes.md). A key is a dotted config path or the name of a derived check (DERIVED).
Composition only: nothing trains.

Sources, at the commits the mirrors hold:
  BCL   phquang/bilevel-continual-learning b3bab95
  GEM   facebookresearch/GradientEpisodicMemory 34c6b8e
  BLIP  Yujun-Shi/BLIP c09814d (IC/ = ImageClassification/src/, MI/ = miniImageNetClassification/src/, RL/)
  HAT   joansj/hat 6fd0b9d (src/)
  MAS   rahafaljundi/MAS-Memory-Aware-Synapses c3e6a85 (MAS_to_be_published/; Demo.ipynb lines are its JSON lines)
  MASPT wannabeOG/MAS-PyTorch e8abf17
"""
from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

import tests.conftest as conftest
from tests.conftest import ROOT, compose_config, config_options

DOCS = ROOT / "docs" / "recipes.md"
MISSING = "<missing>"  # what a key the composed config lacks reads as


# --- derived checks: official settings that map onto a function of several keys -------------------------------------
def trained_tasks(cfg: dict) -> int:
    """Tasks the stream trains: the part of its n_tasks that stream.part keeps (BCL's -val/-cl protocol)."""
    s = cfg["stream"]
    part, n_val = s.get("part", "all"), s.get("n_val_tasks", 0)
    return {"all": s["n_tasks"], "cl": s["n_tasks"] - n_val, "val": n_val}[part]


def label_shift(cfg: dict) -> int:
    """How far the continual part's global labels are shifted down (BCL's hard-coded −15)."""
    s = cfg["stream"]
    return 100 // s["n_tasks"] * s["n_val_tasks"] if s.get("part") == "cl" else 0


def trained_share(cfg: dict) -> float:
    """The share of each task's training images that trains (the rest is held out for validation)."""
    s = cfg["stream"]
    return 1.0 if s.get("valid_from_train") else 1.0 - s["pc_valid"]


def replay_slots(cfg: dict) -> int:
    """BCL-Dual's replay memory per task: n_memories less the evaluation slots."""
    a = cfg["approach"]
    return a["n_memories"] - int(a["n_val"] * a["n_memories"])


def evaluation_slots(cfg: dict) -> int:
    """BCL-Dual's evaluation memory per task: int(0.2 · n_memories) in the code."""
    a = cfg["approach"]
    return int(a["n_val"] * a["n_memories"])


def lr_schedule(cfg: dict) -> str | None:
    """The learning-rate schedule callback, if any."""
    return ((cfg.get("callbacks") or {}).get("lr_schedule") or {}).get("_target_")


def gradient_clip_algorithm(cfg: dict) -> str:
    """Lightning clips the gradient norm unless told otherwise."""
    return cfg["trainer"].get("gradient_clip_algorithm") or "norm"


def data_file(cfg: dict) -> str:
    """The GEM-format file a gem_file stream reads."""
    return os.path.basename(cfg["stream"]["path"])


def pretrained_file(cfg: dict) -> str:
    """The ImageNet weights file the trunk starts from."""
    return os.path.basename(cfg["model"]["trunk"]["pretrained"])


DERIVED = {f.__name__: f for f in (trained_tasks, label_shift, trained_share, replay_slots, evaluation_slots,
                                   lr_schedule, gradient_clip_algorithm, data_file, pretrained_file)}


@dataclass(frozen=True)
class Recipe:
    # the official command ("repo path:line"), or None with `what` saying what the recipe is instead
    command: str | None
    official: dict = field(default_factory=dict)
    # key -> (our value, reason)
    deviations: dict = field(default_factory=dict)
    # label -> reason: differences of behaviour that no config key expresses (docs/recipes.md lists them too)
    behaviours: dict = field(default_factory=dict)
    what: str = ""


# --- shared blocks ----------------------------------------------------------------------------------------------------
B4 = "replay-index filter (B4)"
B7 = "evaluation off-by-one (B7)"
B8 = "seeding (B8)"
RING = "replay ring"
BCL_BEHAVIOURS = {
    RING: "BCL drops the tail of a training batch that straddles the ring's end; ours wraps it (the last M samples)",
    B4: "BCL's filter mixes two index spaces (random dropping); not reproduced",
    B7: "BCL never scores the last test sample but counts it; ours scores every sample",
    B8: "BCL seeds only CUDA; ours seeds every generator from the run seed",
}
BCL = {  # the PREFIX of every run.sh command and the code's fixed choices
    "approach.name": "bcl_dual",  # BCL scripts/run.sh:4 (--model bcl_dual)
    "approach.batch_size": 10,  # BCL scripts/run.sh:4
    "trainer.max_epochs": 1,  # BCL scripts/run.sh:4 (--n_epochs 1)
    "trained_share": 1.0,  # BCL scripts/run.sh:4 (--use 1.0: every training sample, no validation split)
    "stream.use": None,  # BCL scripts/run.sh:4 (--use 1.0)
    "approach.temperature": 5.0,  # BCL scripts/run.sh:4
    "approach.memory_strength": 100.0,  # BCL scripts/run.sh:4
    "approach.replay_batch_size": 128,  # BCL main.py:141
    "approach.n_val": 0.2,  # BCL model/bcl_dual.py:61
    "approach.momentum": 0.0,  # BCL model/bcl_dual.py:46
    "approach.weight_decay": 0.0,  # BCL model/bcl_dual.py:46
    "approach.adapt": False,  # BCL main.py:144
    "approach.memory_policy": "ring",  # BCL model/bcl_dual.py:224-236
    "approach.accumulate_inner_grads": True,  # BCL model/bcl_dual.py:238,255,261,263
    "approach.soft_targets_train_mode": True,  # BCL main.py:187, model/bcl_dual.py:194
    "approach.interpolate_buffers": True,  # BCL model/bcl_dual.py:241,265
    "approach.fill_with_first_sample": True,  # BCL model/bcl_dual.py:206-208,226-228
    "seed": 0,  # BCL main.py:127
}
BCL_PMNIST = {
    **BCL,
    "stream.name": "pmnist",  # BCL scripts/run.sh:5 (mnist_permutations.pt, GEM run_experiments.sh:16-19)
    "stream.train_per_task": None,  # BCL scripts/run.sh:4 (--use 1.0 of the file's 60,000)
    "stream.normalize": False,  # GEM data/mnist_permutations.py:26
    "stream.first_unpermuted": False,  # GEM data/mnist_permutations.py:31-35
    "model.name": "mlp",  # BCL model/bcl_dual.py:38
    "model.trunk.hidden_sizes": [128, 128, 128],  # BCL model/bcl_dual.py:38
    "model.trunk.dropout": 0.0,  # BCL model/common.py:23-34
    "model.head": "shared",  # BCL model/bcl_dual.py:53
    "model.linear_init": "xavier_uniform",  # BCL model/common.py:14-20,34
    "approach.lr": 0.03,  # BCL scripts/run.sh:5
    "approach.beta": 0.3,  # BCL scripts/run.sh:5
    "approach.inner_steps": 1,  # BCL scripts/run.sh:5
    "approach.n_meta": 2,  # BCL scripts/run.sh:5
    "approach.n_memories": 256,  # BCL scripts/run.sh:5
    "replay_slots": 205,  # BCL model/bcl_dual.py:61-62
    "evaluation_slots": 51,  # BCL model/bcl_dual.py:61
}
REDUCED_RESNET = {  # BCL's common.ResNet18 (cifar, mini)
    "model.name": "resnet18_reduced",  # BCL model/bcl_dual.py:32-33
    "model.trunk.base_width": 20,  # BCL model/common.py:123
    "model.trunk.mul": 1.0,  # BCL model/common.py:123
    "model.trunk.blocks": [2, 2, 2, 2],  # BCL model/common.py:124
    "model.trunk.stem_stride": 1,  # BCL model/common.py:85
    "model.trunk.stem_maxpool": True,  # BCL model/common.py:87
    "model.trunk.pool": "avg",  # BCL model/common.py:92
    "model.trunk.bn_affine": True,  # BCL model/common.py:60,86
    "model.head": "multi",  # BCL model/bcl_dual.py:31,51,141-148
    "model.linear_init": "pytorch",  # BCL model/common.py:81-93 (no Xavier)
}
PERMUTATIONS = "task permutations"
GEM_DATA = "task data"
GEM_RING = "memory ring"
GEM_BEHAVIOURS = {
    GEM_DATA: "each task's 1,000 samples: drawn by torch from the run seed (GEM: randperm under --seed 0)",
    B7: "GEM never scores the last test sample but counts it; ours scores every sample",
}
GEM = {  # the flags every run_experiments.sh command shares
    "approach.batch_size": 10,  # GEM run_experiments.sh:4-6
    "trainer.max_epochs": 1,  # GEM main.py:174-175
    "trained_share": 1.0,  # GEM main.py:48-53 (every drawn sample trains)
    "stream.use": None,  # GEM main.py:48-53
    "stream.n_tasks": 20,  # GEM run_experiments.sh:19,26,31
    "approach.momentum": 0.0,  # GEM model/gem.py:111, model/single.py:29
    "approach.weight_decay": 0.0,  # GEM model/gem.py:111, model/single.py:29
    "seed": 0,  # GEM run_experiments.sh:4-6
}
GEM_MNIST = {
    **GEM,
    "stream.train_per_task": 1000,  # GEM run_experiments.sh:4-5
    "stream.normalize": False,  # GEM data/mnist_permutations.py:26-27, data/mnist_rotations.py:21
    "model.name": "mlp",  # GEM model/gem.py:106, model/single.py:26
    "model.trunk.hidden_sizes": [100, 100],  # GEM run_experiments.sh:4-5 (--n_layers 2 --n_hiddens 100)
    "model.trunk.dropout": 0.0,  # GEM model/common.py:22-33
    "model.head": "shared",  # GEM model/gem.py:138-139, model/single.py:36-37
    "model.linear_init": "xavier_uniform",  # GEM model/common.py:13-19,33
}
PMNIST = {
    "stream.name": "pmnist",  # GEM run_experiments.sh:5
    "stream.first_unpermuted": False,  # GEM data/mnist_permutations.py:31-35
}
ROTMNIST = {
    "stream.name": "rotmnist",  # GEM run_experiments.sh:4
    "stream.min_angle": 0.0,  # GEM run_experiments.sh:24
    "stream.max_angle": 180.0,  # GEM run_experiments.sh:25
    "stream.interpolation": "nearest",  # GEM data/mnist_rotations.py:21 (PIL Image.rotate's default)
}
GEM_APPROACH = {
    "approach.name": "gem",  # GEM run_experiments.sh:58-60
    "approach.lr": 0.1,  # GEM run_experiments.sh:58-60
    "approach.n_memories": 256,  # GEM run_experiments.sh:58-60
    "approach.memory_strength": 0.5,  # GEM run_experiments.sh:58-60
    "approach.memory_policy": "ring",  # GEM model/gem.py:159-172
}
GEM_MEMORY = {GEM_RING: "GEM drops the tail of a batch that straddles the ring's end and carries the write position "
                        "over from the previous task; ours keeps the task's last 256 samples"}
PATIENCE = {
    "lr_schedule": "cl.callbacks.schedule.PatienceSchedule",  # BLIP IC/approaches/blip.py:15,71-85
    "callbacks.lr_schedule.lr_patience": 5,  # BLIP IC/approaches/blip.py:15
    "callbacks.lr_schedule.lr_factor": 3.0,  # BLIP IC/approaches/blip.py:15
    "callbacks.lr_schedule.lr_min": 1e-4,  # BLIP IC/approaches/blip.py:15
}
BLIP_IC = {
    **PATIENCE,
    "approach.name": "blip",  # BLIP README.md:89
    "approach.momentum": 0.0,  # BLIP IC/run_blip.py:30
    "approach.weight_decay": 0.0,  # BLIP IC/run_blip.py:31
    "approach.max_bit": 20,  # BLIP IC/run_blip.py:40
    "approach.bound_scale": 6.0,  # BLIP IC/networks/quant_layer.py:37
    "approach.init": "normal",  # BLIP IC/networks/quant_layer.py:45-46
    "approach.prior_fan": "fan_in",  # BLIP IC/networks/quant_layer.py:39
    "approach.fisher.num_samples": 8000,  # BLIP IC/approaches/blip_utils.py:110 (80 batches of 100)
    "approach.fisher.batch_size": 100,  # BLIP IC/approaches/blip_utils.py:110
    "trainer.max_epochs": 200,  # BLIP IC/run_blip.py:27
    "model.head": "multi",  # BLIP IC/networks/q_mlp.py:19-21, IC/networks/q_alexnet.py:60-62
    "model.linear_init": "pytorch",  # BLIP IC/networks/q_mlp.py:21 (heads: nn.Linear)
    "stream.use": None,  # BLIP IC/run_blip.py:126-129 (the whole training split)
    "seed": 0,  # BLIP IC/run_blip.py:18
}
BLIP_MNIST = {
    **BLIP_IC,
    "stream.valid_from_train": True,  # BLIP IC/dataloaders/mnist5.py:86-89, IC/dataloaders/pmnist.py:71-74
    "stream.normalize": True,  # BLIP IC/dataloaders/mnist5.py:14-17, IC/dataloaders/pmnist.py:25-29
    "model.name": "mlp",  # BLIP IC/run_blip.py:82-83
    "model.trunk.hidden_sizes": [1200],  # BLIP IC/run_blip.py:36, IC/networks/q_mlp.py:15-18
    "model.trunk.dropout": 0.0,  # BLIP IC/networks/q_mlp.py:15-18
    "approach.lr": 0.01,  # BLIP README.md:89,95
    "approach.batch_size": 64,  # BLIP README.md:89,95
    "approach.F_prior": 1e-15,  # BLIP README.md:89,95
}
VALID_DRAW = "validation draw"
BLIP_CIFAR = {
    **BLIP_IC,
    "model.name": "alexnet",  # BLIP IC/run_blip.py:84-85
    "model.trunk.fc_sizes": [2048, 2048],  # BLIP IC/networks/q_alexnet.py:37-41
    "model.trunk.dropout": [0.2, 0.2, 0.2, 0.2, 0.2],  # BLIP IC/networks/q_alexnet.py:33-34,43-49
}
BLIP_MI = {
    **PATIENCE,
    "stream.name": "miniimagenet20",  # BLIP MI/run_blip.py:65
    "stream.n_tasks": 20,  # BLIP README.md:141,147,153 (--ntasks 20)
    "stream.pc_valid": 0.02,  # BLIP MI/run_blip.py:23
    "stream.image_size": 84,  # BLIP MI/dataloaders/miniimagenet.py:91,96
    "stream.split_seed": 1234,  # BLIP MI/data/generate_train_test_split.py:36
    "stream.test_fraction": 1 / 6,  # BLIP MI/data/generate_train_test_split.py:40,54-55 (100 of 600)
    "stream.bgr": True,  # BLIP MI/data/generate_train_test_split.py:28, MI/dataloaders/miniimagenet.py:92-98
    "stream.class_order": None,  # BLIP MI/dataloaders/miniimagenet.py:114-116
    "stream.use": None,  # BLIP MI/dataloaders/miniimagenet.py:133-138
    "approach.lr": 0.01,  # BLIP README.md:141,147,153
    "approach.batch_size": 32,  # BLIP README.md:141,147,153
    "approach.momentum": 0.0,  # BLIP README.md:141,147,153
    "approach.weight_decay": 0.0,  # BLIP MI/run_blip.py:34, MI/run_baselines.py:31
    "trainer.max_epochs": 200,  # BLIP MI/run_blip.py:30, MI/run_baselines.py:27
    "model.head": "multi",  # BLIP MI/networks/q_alexnet.py:56-58
    "model.linear_init": "pytorch",  # BLIP MI/networks/q_alexnet.py:58 (heads: nn.Linear)
    "seed": 0,  # BLIP README.md:141,147,153
}
BLIP_MI_APPROACH = {
    "approach.name": "blip",  # BLIP MI/run_blip.py:68
    "approach.max_bit": 20,  # BLIP MI/run_blip.py:43
    "approach.bound_scale": 20.0,  # BLIP MI/networks/quant_layer.py:46
    "approach.init": "default",  # BLIP MI/networks/quant_layer.py:54
    "approach.prior_fan": "fan_in",  # BLIP MI/networks/quant_layer.py:48
    "approach.fisher.num_samples": 1000,  # BLIP MI/approaches/blip_utils.py:139-142
    "approach.fisher.batch_size": 10,  # BLIP MI/dataloaders/miniimagenet.py:139
}
MI_BEHAVIOURS = {
    "class folders": "MI_raw's classes and files in sorted order (the split script: os.listdir's order); the "
                     "script's train.pkl/test.pkl are read as they are",
    VALID_DRAW: "the 2 % drawn by torch from the run seed (the code: random_split)",
}
MAS_DEMO = {
    "stream.name": "mnist5",  # MAS Demo.ipynb:59
    "stream.tasks": [[1, 2], [3, 4], [5, 6], [7, 8], [9, 0]],  # MAS Demo.ipynb:59
    "stream.normalize": True,  # MAS Demo.ipynb:62-70
    "trained_share": 1.0,  # MAS General_utils/MNIST_split.py:61-74 (every training image of the digits)
    "stream.use": None,  # MAS General_utils/MNIST_split.py:61-74
    "model.name": "mlp",  # MAS General_utils/MNIST_Net.py:6-16
    "model.trunk.hidden_sizes": [256, 256],  # MAS General_utils/MNIST_Net.py:7-16
    "model.trunk.dropout": 0.0,  # MAS General_utils/MNIST_Net.py:10-16
    "model.head": "multi",  # MAS MAS.py:182-185 (a new head per task)
    "model.linear_init": "pytorch",  # MAS General_utils/MNIST_Net.py:10-16
    "approach.name": "mas",  # MAS Demo.ipynb:1511,2385
    "approach.momentum": 0.9,  # MAS MAS.py:139,198, Finetune_SGD.py:68
    "approach.batch_size": 150,  # MAS MAS.py:105,160
    "approach.norm": "l2",  # MAS Demo.ipynb:1511,2385
    "approach.omega_per_sample": False,  # MAS MAS_utils/MAS_based_Training.py:166-172
    "approach.omega_batch_size": 200,  # MAS MAS.py:115-118,170-174 (b1=False: batch_size=200)
    "approach.omega_samples": None,  # MAS MAS.py:282-285,339-343 (the task's whole training set)
    "first_task.max_epochs": 10,  # MAS Demo.ipynb:170
    "first_task.lr": 0.01,  # MAS Demo.ipynb:173
    "first_task.batch_size": 200,  # MAS Demo.ipynb:173
    "trainer.max_epochs": 20,  # MAS Demo.ipynb:1506,2381
    "lr_schedule": None,  # MAS MAS.py:25 (×0.1 at epoch 54), Finetune_SGD.py:24 (at 45): none within 20
}
MAS_DEMO_BEHAVIOURS = {
    "initial weights": "the demo starts from the saved General_utils/mnist_net.pth.tar; ours draws PyTorch's "
                       "default init from the run seed",
    "epoch kept": "the demo keeps each task's epoch with the best accuracy on the test split; ours the last epoch",
}
RL_PROTOCOL = {  # RL/run_blip.sh = run_ewc.sh = run_ft.sh but for the approach flags
    "rl_stream.games": ["kung_fu_master", "boxing", "jamesbond", "krull", "riverraid",
                        "space_invaders"],  # BLIP RL/main_rl.py:54-56
    "rl_stream.steps_per_task": 10_000_000,  # BLIP RL/arguments_rl.py:129-131
    "rl_stream.episodic_life": True,  # BLIP RL/rl_module/a2c_ppo_acktr/envs.py:60 (wrap_deepmind's default)
    "rl_stream.noop_max": 30,  # BLIP RL/rl_module/a2c_ppo_acktr/envs.py:43 (baselines' make_atari)
    "rl_stream.frame_skip": 4,  # BLIP RL/rl_module/a2c_ppo_acktr/envs.py:43 (baselines' make_atari)
    "rl_stream.frame_stack": 4,  # BLIP RL/rl_module/a2c_ppo_acktr/envs.py:107
    "rl_stream.max_frames_per_episode": "gym_v4",  # BLIP RL/rl_module/a2c_ppo_acktr/envs.py:38,43
    "rl_model.features": 1024,  # BLIP RL/rl_module/ppo_model.py:176,186
    "ppo.lr": 2.5e-4,  # BLIP RL/run_blip.sh:2
    "ppo.adam_eps": 1e-5,  # BLIP RL/arguments_rl.py:44
    "ppo.linear_lr_decay": True,  # BLIP RL/run_blip.sh:5, RL/rl_module/train_ppo.py:27-30
    "ppo.num_envs": 16,  # BLIP RL/run_blip.sh:3
    "ppo.num_steps": 125,  # BLIP RL/run_blip.sh:3
    "ppo.minibatches": 8,  # BLIP RL/run_blip.sh:3
    "ppo.epochs": 4,  # BLIP RL/arguments_rl.py:101
    "ppo.clip": 0.1,  # BLIP RL/run_blip.sh:2
    "ppo.clip_value_loss": True,  # BLIP RL/main_rl.py:86,100,117
    "ppo.value_coef": 0.5,  # BLIP RL/run_blip.sh:2
    "ppo.entropy_coef": 0.01,  # BLIP RL/run_blip.sh:5
    "ppo.gamma": 0.99,  # BLIP RL/arguments_rl.py:54
    "ppo.gae_lambda": 0.95,  # BLIP RL/arguments_rl.py:64
    "ppo.max_grad_norm": 0.5,  # BLIP RL/arguments_rl.py:79
    "rl_eval.episodes": 10,  # BLIP RL/rl_module/train_ppo.py:102-103, RL/rl_module/evaluation.py:19,31
    "rl_eval.episodes_from": "first_to_finish",  # BLIP RL/rl_module/evaluation.py:19,31,53-55
    "rl_eval.every_updates": 100,  # BLIP RL/run_blip.sh:4
    "rl_eval.max_steps": None,  # BLIP RL/rl_module/evaluation.py:31 (until 10 games have ended)
}
EVAL_SEED = ("the base of the evaluation environments' seeds, kept apart from training's (the code's evaluation "
             "environments 0-5 reuse the seeds of training environments 10-15)")
RL_BEHAVIOURS = {
    "environments": "ale-py's AtariVectorEnv with the DeepMind preprocessing in C++, not gym + baselines' wrappers",
    "lost life": "the code's wrappers reset after a lost life (no-op, then FIRE and action 2 where the game has "
                 "FIRE) and zero the frame stack; ours plays on with the agent's actions and keeps the stack",
    "evaluation timing": "the code also evaluates at a game's last update, before its task end, and skips an "
                         "evaluation while fewer than 2 training games have ended",
}
FISHER_STATES = {"Fisher states": "the code's buffer has replaced the last rollout's first step by the observations "
                                  "after its last step when the task-end Fisher reads it"}
RL_BLIP_APPROACH = {
    "rl_approach._target_": "rl.approaches.BLIP",  # BLIP RL/run_blip.sh:6
    "rl_approach.F_prior": 5e-18,  # BLIP RL/run_blip.sh:6
    "rl_approach.max_bit": 20,  # BLIP RL/rl_module/quant_layer.py:40
    "rl_approach.bound_scale": 6.0,  # BLIP RL/rl_module/quant_layer.py:45
    "rl_approach.prior_fan": "max",  # BLIP RL/rl_module/quant_layer.py:45-46
    "rl_approach.init": "orthogonal",  # BLIP RL/rl_module/quant_layer.py:57
    "rl_approach.fisher_minibatches": 32,  # BLIP RL/rl_module/ppo_blip.py:147
}

# --- the table --------------------------------------------------------------------------------------------------------
TABLE: dict[str, Recipe] = {
    "bcl_dual_pmnist": Recipe(
        "phquang/bilevel-continual-learning scripts/run.sh:5",
        {
            **BCL_PMNIST,
            "trained_tasks": 20,  # GEM run_experiments.sh:19; BCL main.py:101,163-165 (--n_tasks -1: all)
        },
        behaviours={PERMUTATIONS: "drawn from the run seed, tasks 4-23 of 23 (the file: GEM's builder at torch "
                                  "seed 0, its tasks 1-20)", **BCL_BEHAVIOURS},
    ),
    "bcl_dual_pmnist_val": Recipe(
        None,
        {
            **BCL_PMNIST,  # the grid's base: the continual recipe's settings
            "trained_tasks": 3,  # BCL README.md:19 (the -val file holds 3 tasks)
            "stream.part": "val",  # BCL README.md:19,31
        },
        behaviours={PERMUTATIONS: "drawn from the run seed, tasks 1-3 of bcl_dual_pmnist's 23", **BCL_BEHAVIOURS},
        what="BCL's cross-validation on 3 -val tasks (README.md:19,31); BCL ships no grid and no MNIST -val file",
    ),
    "bcl_dual_cifar100": Recipe(
        "phquang/bilevel-continual-learning scripts/run.sh:6",
        {
            **BCL,
            **REDUCED_RESNET,
            "stream.name": "cifar100_split",  # BCL scripts/run.sh:6 (cifar-cl.pt of data/cifar100.py)
            "stream.n_tasks": 20,  # BCL data/cifar100.py:15,28
            "stream.relabel": True,  # BCL data/cifar100.py:29-35
            "stream.relabel_seed": 0,  # BCL data/cifar100.py:16,19
            "trained_tasks": 17,  # BCL data/cifar100.py:50
            "label_shift": 15,  # BCL data/cifar100.py:55
            "stream.normalize": False,  # BCL data/cifar100.py:25-26
            "approach.lr": 0.3,  # BCL scripts/run.sh:6
            "approach.beta": 0.1,  # BCL scripts/run.sh:6
            "approach.inner_steps": 2,  # BCL scripts/run.sh:6
            "approach.n_meta": 1,  # BCL scripts/run.sh:6
            "approach.n_memories": 65,  # BCL scripts/run.sh:6
            "replay_slots": 52,  # BCL model/bcl_dual.py:61-62
            "evaluation_slots": 13,  # BCL model/bcl_dual.py:61
        },
        behaviours=dict(BCL_BEHAVIOURS),
    ),
    "bcl_dual_miniimagenet": Recipe(
        "phquang/bilevel-continual-learning scripts/run.sh:8",
        {
            **BCL,
            **REDUCED_RESNET,
            "stream.name": "gem_file",  # BCL main.py:42-49
            "data_file": "mini-cl.pt",  # BCL scripts/run.sh:8
            "approach.lr": 0.05,  # BCL scripts/run.sh:8
            "approach.beta": 0.1,  # BCL scripts/run.sh:8
            "approach.inner_steps": 2,  # BCL scripts/run.sh:8
            "approach.n_meta": 1,  # BCL scripts/run.sh:8
            "approach.n_memories": 65,  # BCL scripts/run.sh:8
            "replay_slots": 52,  # BCL model/bcl_dual.py:61-62
            "evaluation_slots": 13,  # BCL model/bcl_dual.py:61
        },
        behaviours=dict(BCL_BEHAVIOURS),
    ),
    "bcl_dual_cub": Recipe(
        "phquang/bilevel-continual-learning scripts/run.sh:7",
        {
            **BCL,
            "stream.name": "gem_file",  # BCL main.py:42-49
            "data_file": "cub-cl.pt",  # BCL scripts/run.sh:7
            "model.name": "resnet18_imagenet",  # BCL model/bcl_dual.py:34-35, model/resnet.py:168-179
            "model.trunk.input_size": None,  # BCL model/bcl_dual.py:64-66 (the file's 224×224 images)
            "pretrained_file": "resnet18-5c106cde.pth",  # BCL model/resnet.py:11,177
            "model.head": "multi",  # BCL model/bcl_dual.py:31,51,141-148
            "model.linear_init": "pytorch",  # BCL model/resnet.py:178
            "approach.lr": 0.03,  # BCL scripts/run.sh:7
            "approach.beta": 0.3,  # BCL scripts/run.sh:7
            "approach.inner_steps": 1,  # BCL scripts/run.sh:7
            "approach.n_meta": 2,  # BCL scripts/run.sh:7
            "approach.n_memories": 50,  # BCL scripts/run.sh:7
            "replay_slots": 40,  # BCL model/bcl_dual.py:61-62
            "evaluation_slots": 10,  # BCL model/bcl_dual.py:61
        },
        deviations={"pretrained_file": ("resnet18-f37072fd.pth", "the same ImageNet weights, re-saved by torchvision "
                                                                  "in torch's newer format (pytorch/vision#2068)")},
        behaviours=dict(BCL_BEHAVIOURS),
    ),
    "gem_pmnist": Recipe(
        "facebookresearch/GradientEpisodicMemory run_experiments.sh:59",
        {**GEM_MNIST, **PMNIST, **GEM_APPROACH, "trained_tasks": 20},  # GEM run_experiments.sh:19
        behaviours={PERMUTATIONS: "drawn from the run seed (the file: GEM's builder at torch seed 0)",
                    **GEM_BEHAVIOURS, **GEM_MEMORY},
    ),
    "gem_rotmnist": Recipe(
        "facebookresearch/GradientEpisodicMemory run_experiments.sh:58",
        {**GEM_MNIST, **ROTMNIST, **GEM_APPROACH, "trained_tasks": 20},  # GEM run_experiments.sh:26
        behaviours={"rotation angles": "drawn from the run seed (the builder: Python's random, unseeded)",
                    **GEM_BEHAVIOURS, **GEM_MEMORY},
    ),
    "gem_single_pmnist": Recipe(
        "facebookresearch/GradientEpisodicMemory run_experiments.sh:37",
        {
            **GEM_MNIST,
            **PMNIST,
            "trained_tasks": 20,  # GEM run_experiments.sh:19
            "approach.name": "sgd",  # GEM run_experiments.sh:37 (--model single)
            "approach.lr": 0.03,  # GEM run_experiments.sh:37
        },
        behaviours={PERMUTATIONS: "drawn from the run seed (the file: GEM's builder at torch seed 0)",
                    **GEM_BEHAVIOURS},
    ),
    "gem_single_rotmnist": Recipe(
        "facebookresearch/GradientEpisodicMemory run_experiments.sh:36",
        {
            **GEM_MNIST,
            **ROTMNIST,
            "trained_tasks": 20,  # GEM run_experiments.sh:26
            "approach.name": "sgd",  # GEM run_experiments.sh:36 (--model single)
            "approach.lr": 0.003,  # GEM run_experiments.sh:36
        },
        behaviours={"rotation angles": "drawn from the run seed (the builder: Python's random, unseeded)",
                    **GEM_BEHAVIOURS},
    ),
    "gem_cifar100": Recipe(
        "facebookresearch/GradientEpisodicMemory run_experiments.sh:60",
        {
            **GEM,
            **GEM_APPROACH,
            "stream.name": "cifar100_split",  # GEM run_experiments.sh:6
            "trained_tasks": 20,  # GEM run_experiments.sh:31
            "stream.relabel": False,  # GEM data/cifar100.py:30-36 (classes in id order)
            "stream.normalize": False,  # GEM data/cifar100.py:25-26
            "model.name": "resnet18_reduced",  # GEM model/gem.py:103-104
            "model.trunk.base_width": 20,  # GEM model/common.py:104
            "model.trunk.mul": 1.0,  # GEM model/common.py:104
            "model.trunk.blocks": [2, 2, 2, 2],  # GEM model/common.py:105
            "model.trunk.stem_stride": 1,  # GEM model/common.py:75
            "model.trunk.stem_maxpool": False,  # GEM model/common.py:91-96
            "model.trunk.pool": "avg4",  # GEM model/common.py:98
            "model.trunk.bn_affine": True,  # GEM model/common.py:50,76
            "model.head": "multi",  # GEM model/gem.py:102,136-151
            "model.linear_init": "pytorch",  # GEM model/common.py:70-81 (no Xavier)
            "approach.update_bn_on_memory": True,  # GEM main.py:142, model/gem.py:183-188
        },
        behaviours={B7: GEM_BEHAVIOURS[B7], **GEM_MEMORY},
    ),
    "blip_mnist5": Recipe(
        "Yujun-Shi/BLIP README.md:89",
        {
            **BLIP_MNIST,
            "stream.name": "mnist5",  # BLIP README.md:89
            "stream.tasks": [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]],  # BLIP IC/dataloaders/mnist5.py:19-33
            "trainer.max_epochs": 200,  # BLIP README.md:89
        },
    ),
    "blip_pmnist": Recipe(
        "Yujun-Shi/BLIP README.md:95",
        {
            **BLIP_MNIST,
            "stream.name": "pmnist",  # BLIP README.md:95
            "stream.n_tasks": 10,  # BLIP IC/dataloaders/pmnist.py:15
            "stream.first_unpermuted": False,  # BLIP IC/dataloaders/pmnist.py:32-43
            "stream.train_per_task": None,  # BLIP IC/dataloaders/pmnist.py:39-46
            "trainer.max_epochs": 200,  # BLIP README.md:95
        },
        behaviours={PERMUTATIONS: "torch.randperm seeded by (seed, task); the code: sklearn shuffle with "
                                  "random_state r·100+i"},
    ),
    "blip_cifar": Recipe(
        "Yujun-Shi/BLIP README.md:101",
        {
            **BLIP_CIFAR,
            "stream.name": "cifar_alt",  # BLIP IC/run_blip.py:68-69
            "stream.strict_alternation": False,  # BLIP IC/dataloaders/cifar.py:66
            "stream.pc_valid": 0.1,  # BLIP IC/dataloaders/cifar.py:8
            "model.trunk.mul": 2.0,  # BLIP README.md:101
            "model.trunk.scale_fc": False,  # BLIP IC/networks/q_alexnet.py:39-41
            "approach.lr": 0.05,  # BLIP README.md:101
            "approach.batch_size": 32,  # BLIP README.md:101
            "approach.F_prior": 5e-16,  # BLIP README.md:101
        },
        behaviours={VALID_DRAW: "the 10 % drawn by torch from the run seed (the code: sklearn shuffle, seed)"},
    ),
    "blip_mixture5": Recipe(
        "Yujun-Shi/BLIP README.md:107",
        {
            **BLIP_CIFAR,
            "stream.name": "mixture5",  # BLIP IC/run_blip.py:70-71
            "stream.fixed_order": False,  # BLIP IC/dataloaders/mixture5.py:21-22
            "stream.pc_valid": 0.15,  # BLIP IC/dataloaders/mixture5.py:15
            "model.trunk.mul": 0.8,  # BLIP README.md:107
            "model.trunk.scale_fc": True,  # BLIP IC/networks/q_alexnet.py:36-38
            "approach.lr": 0.05,  # BLIP README.md:107
            "approach.batch_size": 32,  # BLIP README.md:107
            "approach.F_prior": 5e-17,  # BLIP README.md:107
        },
        behaviours={VALID_DRAW: "the 15 % drawn by torch from the run seed (the code: sklearn shuffle, seed)"},
    ),
    "blip_miniimagenet_alexnet": Recipe(
        "Yujun-Shi/BLIP README.md:141",
        {
            **BLIP_MI,
            **BLIP_MI_APPROACH,
            "model.name": "alexnet84",  # BLIP README.md:141 (--arch alexnet)
            "model.trunk.mul": 1.0,  # BLIP README.md:141
            "model.trunk.fc_sizes": [2048, 512],  # BLIP MI/networks/q_alexnet.py:36-37
            "model.trunk.dropout": [0.2, 0.2, 0.5, 0.5, 0.5],  # BLIP MI/networks/q_alexnet.py:33-34,39-46
            "approach.F_prior": 5e-16,  # BLIP README.md:141
        },
        behaviours=dict(MI_BEHAVIOURS),
    ),
    "blip_miniimagenet_resnet18": Recipe(
        "Yujun-Shi/BLIP README.md:147",
        {
            **BLIP_MI,
            **BLIP_MI_APPROACH,
            "model.name": "resnet18",  # BLIP README.md:147 (--arch resnet)
            "model.trunk.mul": 1.5,  # BLIP README.md:147
            "model.trunk.base_width": 64,  # BLIP MI/networks/q_resnet.py:44,51
            "model.trunk.blocks": [2, 2, 2, 2],  # BLIP MI/networks/q_resnet.py:86
            "model.trunk.stem_stride": 2,  # BLIP MI/networks/q_resnet.py:51-52
            "model.trunk.stem_maxpool": False,  # BLIP MI/networks/q_resnet.py:72-73
            "model.trunk.bn_affine": False,  # BLIP MI/networks/q_resnet.py:8
            "model.trunk.pool": "avg4",  # BLIP MI/networks/q_resnet.py:77
            "model.trunk.freeze_bn_after_first_task": True,  # BLIP MI/approaches/blip.py:91-95
            "approach.F_prior": 1e-16,  # BLIP README.md:147
        },
        behaviours={"tasks run": "the code stops after task 1 (MI/utils.py:72 reads model.features, which its ResNet "
                                 "lacks, bug Q2); ours runs all 20", **MI_BEHAVIOURS},
    ),
    "lwf_blip_miniimagenet": Recipe(
        "Yujun-Shi/BLIP README.md:153",
        {
            **BLIP_MI,
            "approach.name": "lwf",  # BLIP README.md:153 (--approach lwf)
            "approach.variant": "paper",  # BLIP MI/approaches/lwf.py:135-149 (every old head distilled)
            "approach.lamb": 2.0,  # BLIP MI/approaches/lwf.py:11,27
            "approach.T": 1.0,  # BLIP MI/approaches/lwf.py:11,28
            "approach.eps": 1e-5,  # BLIP MI/approaches/utils.py:41
            "approach.warmup_epochs": 0,  # BLIP MI/approaches/lwf.py:136
            "approach.momentum": 0.0,  # BLIP MI/approaches/lwf.py:35
            "trainer.gradient_clip_val": 100,  # BLIP MI/approaches/lwf.py:11,99
            "gradient_clip_algorithm": "norm",  # BLIP MI/approaches/lwf.py:99
            "callbacks.lr_schedule.lr_patience": 5,  # BLIP MI/approaches/lwf.py:11
            "callbacks.lr_schedule.lr_factor": 3.0,  # BLIP MI/approaches/lwf.py:11
            "callbacks.lr_schedule.lr_min": 1e-4,  # BLIP MI/approaches/lwf.py:11
            "model.name": "alexnet84",  # BLIP MI/run_baselines.py:72-73
            "model.trunk.mul": 1.0,  # BLIP README.md:153
            "model.trunk.fc_sizes": [2048, 512],  # BLIP MI/networks/alexnet.py:31-32
            "model.trunk.dropout": [0.2, 0.2, 0.2, 0.2, 0.2],  # BLIP MI/networks/alexnet.py:28-29
        },
        behaviours=dict(MI_BEHAVIOURS),
    ),
    "hat_cifar": Recipe(
        "joansj/hat src/run.py:12-18",
        {
            "stream.name": "cifar_alt",  # HAT src/run.py:42-43 (--experiment cifar)
            "stream.strict_alternation": False,  # HAT src/dataloaders/cifar.py:65
            "stream.pc_valid": 0.1,  # HAT src/dataloaders/cifar.py:8
            "stream.use": None,  # HAT src/dataloaders/cifar.py:80-90
            "model.name": "alexnet",  # HAT src/run.py:86-87
            "model.trunk.mul": 1.0,  # HAT src/networks/alexnet_hat.py:15-21
            "model.trunk.fc_sizes": [2048, 2048],  # HAT src/networks/alexnet_hat.py:30-31
            "model.trunk.scale_fc": False,  # HAT src/networks/alexnet_hat.py:30-31
            "model.trunk.dropout": [0.2, 0.2, 0.5, 0.5, 0.5],  # HAT src/networks/alexnet_hat.py:28-29,59-68
            "model.head": "multi",  # HAT src/networks/alexnet_hat.py:32-34
            "approach.name": "hat",  # HAT src/run.py:72-73
            "approach.lr": 0.05,  # HAT src/run.py:18
            "approach.batch_size": 64,  # HAT src/approaches/hat.py:11
            "approach.momentum": 0.0,  # HAT src/approaches/hat.py:40
            "approach.weight_decay": 0.0,  # HAT src/approaches/hat.py:40
            "approach.lamb": 0.75,  # HAT src/approaches/hat.py:11
            "approach.smax": 400.0,  # HAT src/approaches/hat.py:11
            "approach.clipgrad": 10000.0,  # HAT src/approaches/hat.py:11
            "approach.thres_cosh": 50.0,  # HAT src/approaches/hat.py:106
            "approach.thres_emb": 6.0,  # HAT src/approaches/hat.py:106
            "trainer.max_epochs": 200,  # HAT src/run.py:17
            "lr_schedule": "cl.callbacks.schedule.PatienceSchedule",  # HAT src/approaches/hat.py:63-78
            "callbacks.lr_schedule.lr_patience": 5,  # HAT src/approaches/hat.py:11
            "callbacks.lr_schedule.lr_factor": 3.0,  # HAT src/approaches/hat.py:11
            "callbacks.lr_schedule.lr_min": 1e-4,  # HAT src/approaches/hat.py:11
            "seed": 0,  # HAT src/run.py:11
        },
        behaviours={"model selection": "on validation cross-entropy; the code's validation loss adds c·regularizer "
                                       "(src/approaches/hat.py:182,209; docs/hat.md)",
                    VALID_DRAW: "the 10 % drawn by torch from the run seed (the code: sklearn shuffle, seed)"},
    ),
    "mas_mnist_demo": Recipe(
        "rahafaljundi/MAS-Memory-Aware-Synapses MAS_to_be_published/Demo.ipynb:2385",
        {
            **MAS_DEMO,
            "approach.lr": 1e-3,  # MAS Demo.ipynb:2385,2387
            "approach.lamb": 1.0,  # MAS Demo.ipynb:2367
            "approach.weight_decay": 0.0,  # MAS MAS.py:83,198
            "approach.accumulate": "sum",  # MAS MAS.py:147,176,361
        },
        behaviours=dict(MAS_DEMO_BEHAVIOURS),
    ),
    "mas_mnist_demo_sequence": Recipe(
        "rahafaljundi/MAS-Memory-Aware-Synapses MAS_to_be_published/Demo.ipynb:1511",
        {
            **MAS_DEMO,
            "approach.lr": 1e-2,  # MAS Demo.ipynb:1511
            "approach.lamb": 1.0,  # MAS Demo.ipynb:1493
            "approach.weight_decay": 1e-5,  # MAS MAS.py:93,139 (applied as 1e-5·sign(θ): MAS_based_Training.py:91)
            "approach.accumulate": "sequence",  # MAS MAS.py:119,262-316
        },
        deviations={"approach.weight_decay": (0.0, "the code's decay is 1e-5·sign(θ) (MAS_based_Training.py:91); "
                                                    "approach.weight_decay is PyTorch's L2 decay, so it stays 0")},
        behaviours=dict(MAS_DEMO_BEHAVIOURS),
    ),
    "mas_tinyimagenet4": Recipe(
        "wannabeOG/MAS-PyTorch main.py:36-40",
        {
            "stream.name": "tinyimagenet4",  # MASPT data_prep.py:92
            "stream.n_tasks": 4,  # MASPT data_prep.py:92,115 (4 tasks of 50 classes)
            "stream.image_size": 64,  # MASPT data_prep.py:66-76 (Tiny-ImageNet's 64×64 files)
            "trained_share": 1.0,  # MASPT main.py:85,89 (the whole train folder trains)
            "stream.use": None,  # MASPT main.py:85,89
            "model.name": "alexnet_imagenet",  # MASPT main.py:113
            "model.trunk.input_size": 224,  # MASPT main.py:62,69-70
            "model.trunk.fc_sizes": [4096, 4096],  # MASPT main.py:113 (torchvision's AlexNet)
            "model.trunk.dropout": 0.5,  # MASPT main.py:113 (torchvision's AlexNet)
            "model.trunk.trainable_layers": ["features.0", "features.3", "features.6", "classifier.1",
                                             "classifier.4"],  # MASPT utils/mas_utils.py:318-344
            "model.head": "multi",  # MASPT main.py:124-126, utils/model_utils.py:175
            "model.linear_init": "pytorch",  # MASPT utils/model_utils.py:175
            "approach.name": "mas",  # MASPT mas.py:30
            "approach.batch_size": 32,  # MASPT main.py:36
            "approach.lr": 1e-3,  # MASPT main.py:39
            "approach.lamb": 0.01,  # MASPT main.py:40
            "approach.momentum": 0.0,  # MASPT optimizer_lib.py:20, mas.py:60
            "approach.weight_decay": 0.0,  # MASPT optimizer_lib.py:20, mas.py:60
            "approach.norm": "l2",  # MASPT utils/mas_utils.py:197-199
            "approach.omega_per_sample": False,  # MASPT optimizer_lib.py:125-134
            "approach.omega_batch_size": 32,  # MASPT model_train.py:105 (the training loader)
            "approach.omega_samples": None,  # MASPT model_train.py:105
            "approach.accumulate": "sum",  # MASPT utils/mas_utils.py:146-149
            "trainer.max_epochs": 10,  # MASPT main.py:38
            "lr_schedule": "cl.callbacks.schedule.StepDecay",  # MASPT model_train.py:154, utils/model_utils.py:26-38
            "callbacks.lr_schedule.step_size": 20,  # MASPT utils/model_utils.py:26
            "callbacks.lr_schedule.gamma": 0.1,  # MASPT utils/model_utils.py:31
        },
        deviations={"model.trunk.trainable_layers": (
            ["features.8", "features.10", "classifier.1", "classifier.4"],
            "bug M4: the code exempts from Ω exactly the convolutions it "
            "trains (conv1-3) and freezes conv4-5; ours trains and regularizes conv4-5 and the classifier")},
        behaviours={
            "augmentation": "RandomResizedCrop(224) + flip for training, Resize(256) + CenterCrop(224) for testing; "
                            "ours resizes each 64×64 image to 224×224",
            "class split": "bugs M2/M3: classes in directory-listing order, train and test from two listings; ours "
                           "one seeded class list for both",
            "penalty from task 2": "bug M1: the code's Ω and θ* are keyed by Parameter objects that no longer exist "
                                   "after its rebuild, so task 2 on trains without the penalty; ours applies it",
            "forgetting sign": "bug M5: the code reports new − old; ours old − new (positive = forgot)",
        },
    ),
    "rl_atari6": Recipe(
        None,
        dict(RL_PROTOCOL),
        behaviours=dict(RL_BEHAVIOURS),
        what="the protocol shared by the rl_atari6_* recipes (RL/run_blip.sh = run_ewc.sh = run_ft.sh but for the "
             "approach flags); alone, it runs BLIP with seed 0",
    ),
    "rl_atari6_blip": Recipe(
        "Yujun-Shi/BLIP RL/run_blip.sh:1-6",
        {
            **RL_PROTOCOL,
            **RL_BLIP_APPROACH,
            "seed": 1,  # BLIP RL/run_blip.sh:6
            "rl_eval.seed": 11,  # BLIP RL/rl_module/evaluation.py:16 (seed + 10)
        },
        deviations={"rl_eval.seed": (10_000, EVAL_SEED)},
        behaviours={**RL_BEHAVIOURS, **FISHER_STATES},
    ),
    "rl_atari6_ewc": Recipe(
        "Yujun-Shi/BLIP RL/run_ewc.sh:1-6",
        {
            **RL_PROTOCOL,
            "rl_approach._target_": "rl.approaches.OnlineEWC",  # BLIP RL/run_ewc.sh:6 (--ewc-online True)
            "rl_approach.lamb": 5000.0,  # BLIP RL/run_ewc.sh:6
            "rl_approach.gamma": 1.0,  # BLIP RL/rl_module/ppo_ewc.py:240-244 (the Fishers summed)
            "rl_approach.fisher_minibatches": 32,  # BLIP RL/rl_module/ppo_ewc.py:136
            "rl_approach.fisher_estimator": "minibatch_mean",  # BLIP RL/rl_module/ppo_ewc.py:154,160,166
            "seed": 1,  # BLIP RL/run_ewc.sh:6
            "rl_eval.seed": 11,  # BLIP RL/rl_module/evaluation.py:16 (seed + 10)
        },
        deviations={"rl_eval.seed": (10_000, EVAL_SEED)},
        behaviours={**RL_BEHAVIOURS, **FISHER_STATES},
    ),
    "rl_atari6_ft": Recipe(
        "Yujun-Shi/BLIP RL/run_ft.sh:1-6",
        {
            **RL_PROTOCOL,
            "rl_approach._target_": "rl.approaches.FineTune",  # BLIP RL/run_ft.sh:6 (--approach fine-tuning)
            "seed": 0,  # BLIP RL/run_ft.sh:6
            "rl_eval.seed": 10,  # BLIP RL/rl_module/evaluation.py:16 (seed + 10)
        },
        deviations={"rl_eval.seed": (10_000, EVAL_SEED)},
        behaviours=dict(RL_BEHAVIOURS),
    ),
    "rl_atari6_ftfix": Recipe(
        "Yujun-Shi/BLIP RL/run_ft.sh:1-6 with --approach ft-fix (RL/arguments_rl.py:12, RL/main_rl.py:158-161)",
        {
            **RL_PROTOCOL,
            "rl_approach._target_": "rl.approaches.FineTuneFixed",  # BLIP RL/main_rl.py:158-161
            "seed": 0,  # BLIP RL/run_ft.sh:6
            "rl_eval.seed": 10,  # BLIP RL/rl_module/evaluation.py:16 (seed + 10)
        },
        deviations={"rl_eval.seed": (10_000, EVAL_SEED)},
        behaviours=dict(RL_BEHAVIOURS),
    ),
    **{name: Recipe(None, what=what) for name, what in {
        "rl_minatar": "this project's small stream (three MinAtar games), the base of the rl_minatar_* recipes",
        "rl_minatar_blip": "BLIP on this project's MinAtar stream",
        "rl_minatar_ewc": "online EWC on this project's MinAtar stream",
        "rl_minatar_ft": "fine-tuning on this project's MinAtar stream",
        "rl_minatar_ftfix": "FT-fix on this project's MinAtar stream",
    }.items()},
}


# --- reading a composed config ----------------------------------------------------------------------------------------
def resolved(cfg: DictConfig) -> dict:
    """The composed config as plain data, interpolations resolved (the Hydra config left out)."""
    return {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
            for k, v in cfg.items() if k != "hydra"}


def value(cfg: dict, key: str):
    if key in DERIVED:
        return DERIVED[key](cfg)
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def check(name: str, cfg: dict) -> dict[str, tuple]:
    """The keys of recipe `name` whose composed value is neither the official one nor a listed deviation's:
    key -> (expected, composed)."""
    recipe, bad = TABLE[name], {}
    for key, official in recipe.official.items():
        expected = recipe.deviations[key][0] if key in recipe.deviations else official
        got = value(cfg, key)
        if not same(got, expected):
            bad[key] = (expected, got)
    return bad


_CONFIGS: dict[str, dict] = {}


def composed(name: str, run_dir: Path) -> dict:
    if name not in _CONFIGS:
        _CONFIGS[name] = resolved(compose_config([f"experiment={name}"], run_dir))
    return _CONFIGS[name]


def docs_sections() -> dict[str, str]:
    """docs/recipes.md's sections by recipe: the text under each `## \\`<recipe>\\`` heading."""
    parts = re.split(r"^## `([a-z0-9_]+)`[^\n]*$", DOCS.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("recipes")


# --- the tests --------------------------------------------------------------------------------------------------------
def test_every_recipe_has_a_table_entry_and_a_docs_section():
    recipes = set(config_options("experiment"))
    assert recipes == set(TABLE), (f"no table entry: {sorted(recipes - set(TABLE))}; "
                                   f"entry without recipe: {sorted(set(TABLE) - recipes)}")
    sections = docs_sections()
    assert recipes == set(sections), (f"no docs/recipes.md section: {sorted(recipes - set(sections))}; "
                                      f"section without recipe: {sorted(set(sections) - recipes)}")


def test_the_table_is_consistent():
    for name, recipe in TABLE.items():
        assert recipe.command or recipe.what, f"{name}: say what the recipe is when it has no official command"
        for key, (ours, reason) in recipe.deviations.items():
            assert key in recipe.official, f"{name}: deviation {key} has no official value"
            assert not same(ours, recipe.official[key]), f"{name}: {key} is listed as a deviation but equals it"
            assert reason, f"{name}: deviation {key} needs its reason"
        for key in recipe.official:
            assert key in DERIVED or "." in key or key == "seed", f"{name}: {key} is neither a path nor a check"


@pytest.mark.parametrize("name", config_options("experiment"))
def test_recipe_is_its_official_command(name, run_dir):
    bad = check(name, composed(name, run_dir))
    assert not bad, f"{name} differs from {TABLE[name].command or 'its table'}: " + "; ".join(
        f"{k}: official/listed {want!r}, recipe {got!r}" for k, (want, got) in sorted(bad.items()))


@pytest.mark.parametrize("name", config_options("experiment"))
def test_docs_section_names_the_command_and_every_difference(name):
    recipe, section = TABLE[name], docs_sections()[name]
    if recipe.command:
        assert recipe.command in section, f"docs/recipes.md `{name}`: cite {recipe.command}"
    else:
        assert "No official command" in section, f"docs/recipes.md `{name}`: say it has no official command"
    for key in [*recipe.deviations, *recipe.behaviours]:
        assert key in section, f"docs/recipes.md `{name}`: list the difference {key!r}"


@pytest.mark.parametrize("recipe, old, new, key", [
    pytest.param("bcl_dual_pmnist", "  lr: 0.03\n", "  lr: 0.05\n", "approach.lr", id="bcl-lr"),
    pytest.param("bcl_dual_pmnist", "  n_val_tasks: 3\n", "  n_val_tasks: 4\n", "trained_tasks", id="bcl-tasks"),
    pytest.param("blip_mnist5", "  F_prior: 1.0e-15\n", "  F_prior: 5.0e-15\n", "approach.F_prior", id="blip-prior"),
    pytest.param("blip_miniimagenet_resnet18", "    pool: avg4\n", "    pool: avg\n", "model.trunk.pool",
                 id="blip-pool"),
    # a listed deviation holds its value too
    pytest.param("mas_mnist_demo_sequence", "  weight_decay: 0.0\n", "  weight_decay: 1.0e-4\n",
                 "approach.weight_decay", id="mas-deviation"),
])
def test_an_edited_recipe_is_reported(recipe, old, new, key, tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    shutil.copytree(conftest.CONF_DIR, conf)
    path = conf / "experiment" / f"{recipe}.yaml"
    text = path.read_text()
    assert text.count(old) == 1, f"{recipe}.yaml should hold {old!r} once"
    path.write_text(text.replace(old, new))
    monkeypatch.setattr(conftest, "CONF_DIR", conf)
    bad = check(recipe, resolved(compose_config([f"experiment={recipe}"], tmp_path / "run")))
    assert set(bad) == {key}, bad
