"""What every option of the composed config may hold: type, range or choices, checked before anything heavy is
imported (torch, Lightning), so that a mistyped or out-of-range value stops within a second or two with one line
that names the key, the value and what is allowed.

RULES maps a dotted key of the composed config to its rule; a key absent from the composed config (an option of an
approach that is not selected) is skipped. Every value of every shipped config file has a rule
(tests/test_options.py checks it): a new knob gets its line here.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from cl.errors import ConfigError


class Rule:
    def problem(self, value) -> str | None:
        """None when `value` is allowed, else what is wrong with it (completes '<key>=<value> ...')."""
        raise NotImplementedError

    def allowed(self) -> str:
        raise NotImplementedError

    def __or__(self, other: "Rule") -> "AnyOf":
        return AnyOf((self, other))


def _number_text(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Number(Rule):
    """An int or float within optional bounds; `ge`/`gt`/`le`/`lt` as in 'greater or equal', etc."""

    kind: type = float
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    optional: bool = False

    def allowed(self) -> str:
        bounds = [f"{op} {_number_text(v)}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                  if v is not None]
        text = ("an integer" if self.kind is int else "a number") + (" " + " and ".join(bounds) if bounds else "")
        return text + (", or null" if self.optional else "")

    def problem(self, value) -> str | None:
        if value is None:
            return None if self.optional else f"must be {self.allowed()}"
        numeric = _is_int(value) or (self.kind is float and isinstance(value, float))
        if not numeric:
            return f"has the wrong type: expected {self.kind.__name__} ({self.allowed()})"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number ({self.allowed()})"
        checks = ((self.ge, value >= (self.ge or 0)), (self.gt, value > (self.gt or 0)),
                  (self.le, value <= (self.le or 0)), (self.lt, value < (self.lt or 0)))
        if any(bound is not None and not ok for bound, ok in checks):
            return f"is out of range: must be {self.allowed()}"
        return None


def Int(**bounds) -> Number:
    return Number(int, **bounds)


def Float(**bounds) -> Number:
    return Number(float, **bounds)


@dataclass(frozen=True)
class Choice(Rule):
    values: tuple

    def allowed(self) -> str:
        return "one of " + ", ".join(map(repr, self.values))

    def problem(self, value) -> str | None:
        return None if value in self.values else f"is not {self.allowed()}"


@dataclass(frozen=True)
class Bool(Rule):
    def allowed(self) -> str:
        return "true or false"

    def problem(self, value) -> str | None:
        return None if isinstance(value, bool) else f"has the wrong type: expected bool ({self.allowed()})"


@dataclass(frozen=True)
class Text(Rule):
    """Free text: a name or a path (null allowed when `optional`)."""

    optional: bool = False

    def allowed(self) -> str:
        return "a string" + (" or null" if self.optional else "")

    def problem(self, value) -> str | None:
        if value is None and self.optional or isinstance(value, str):
            return None
        return f"has the wrong type: expected {self.allowed()}"


@dataclass(frozen=True)
class ListOf(Rule):
    item: Rule
    min_len: int = 0
    length: int | None = None
    optional: bool = False

    def allowed(self) -> str:
        size = (f" of {self.length}" if self.length else f" of at least {self.min_len}" if self.min_len > 1
                else " of at least one" if self.min_len else "")
        return f"a list{size} ({self.item.allowed()})" + (" or null" if self.optional else "")

    def problem(self, value) -> str | None:
        if value is None and self.optional:
            return None
        if not isinstance(value, (list, tuple)):
            return f"has the wrong type: expected {self.allowed()}"
        if len(value) < self.min_len or (self.length is not None and len(value) != self.length):
            return f"must be {self.allowed()}"
        for v in value:
            if self.item.problem(v) is not None:
                return f"holds {v!r}: must be {self.allowed()}"
        return None


@dataclass(frozen=True)
class AnyOf(Rule):
    rules: tuple

    def allowed(self) -> str:
        return ", or ".join(r.allowed() for r in self.rules)

    def __or__(self, other: Rule) -> "AnyOf":
        return AnyOf((*self.rules, other))

    def problem(self, value) -> str | None:
        if any(r.problem(value) is None for r in self.rules):
            return None
        return f"must be {self.allowed()}"


_PROBABILITY = Float(ge=0, lt=1)

# knobs of the same name and meaning in approach (supervised) and rl_approach: BLIP's quantization, the
# regularization strength (EWC λ, SI c, MAS λ, LwF λ_o, IMM λ, HAT c) and online EWC's decay γ
_SHARED_APPROACH_RULES: dict[str, Rule] = {
    "F_prior": Float(gt=0),
    "max_bit": Int(ge=1, le=30),
    "bound_scale": Float(gt=0),
    "init": Choice(("normal", "default", "orthogonal")),
    "prior_fan": Choice(("fan_in", "max")),
    "lamb": Float(ge=0),
    "gamma": Float(ge=0, le=1),
}

RULES: dict[str, Rule] = {
    # --- run -------------------------------------------------------------------------------------------------------
    "seed": Int(ge=0, lt=2**32),
    "resume": Bool(),
    "protocol": Choice(("test", "validation")),
    "validation_tasks": Int(ge=1),
    "eval_max_samples": Int(ge=1, optional=True),
    "checkpoint_every_n_steps": Int(ge=1, optional=True),
    "first_task.max_epochs": Int(ge=1, optional=True),
    "first_task.lr": Float(gt=0, optional=True),
    "first_task.batch_size": Int(ge=1, optional=True),
    # --- trainer (Lightning Trainer arguments) ---------------------------------------------------------------------
    "trainer.accelerator": Choice(("cpu", "gpu", "cuda", "mps", "auto")),
    "trainer.devices": Int(ge=1) | Choice(("auto",)) | ListOf(Int(ge=0), min_len=1),
    "trainer.num_nodes": Int(ge=1),
    "trainer.strategy": Text(),
    "trainer.max_epochs": Int(ge=1),
    "trainer.gradient_clip_val": Float(gt=0, optional=True),
    "trainer.limit_train_batches": Int(ge=1) | Float(gt=0, le=1),
    "trainer.limit_val_batches": Int(ge=0) | Float(ge=0, le=1),
    "trainer.num_sanity_val_steps": Int(ge=-1),
    "trainer.log_every_n_steps": Int(ge=1),
    "trainer.enable_model_summary": Bool(),
    "trainer.enable_checkpointing": Bool(),
    "trainer.deterministic": Bool(),
    # --- callbacks -------------------------------------------------------------------------------------------------
    "callbacks.progress_bar.refresh_rate": Int(ge=0),
    "callbacks.lr_schedule.lr_patience": Int(ge=1),
    "callbacks.lr_schedule.lr_factor": Float(gt=1),
    "callbacks.lr_schedule.lr_min": Float(gt=0),
    "callbacks.lr_schedule.step_size": Int(ge=1),
    "callbacks.lr_schedule.gamma": Float(gt=0, le=1),
    # --- model -----------------------------------------------------------------------------------------------------
    "model.name": Text(),
    "model.head": Choice(("multi", "shared")),
    "model.linear_init": Choice(("pytorch", "xavier_uniform")),
    "model.trunk.hidden_sizes": ListOf(Int(ge=1), min_len=1),
    "model.trunk.dropout": _PROBABILITY | ListOf(_PROBABILITY, length=5),
    "model.trunk.mul": Float(gt=0),
    "model.trunk.fc_sizes": ListOf(Int(ge=1), length=2),
    "model.trunk.scale_fc": Bool(),
    "model.trunk.base_width": Int(ge=1),
    "model.trunk.blocks": ListOf(Int(ge=1), min_len=1),
    "model.trunk.stem_stride": Int(ge=1),
    "model.trunk.stem_maxpool": Bool(),
    "model.trunk.bn_affine": Bool(),
    "model.trunk.pool": Choice(("avg", "avg4")),
    "model.trunk.freeze_bn_after_first_task": Bool(),
    "model.trunk.input_size": Int(ge=63, optional=True),
    "model.trunk.pretrained": Text(optional=True),
    "model.trunk.trainable_layers": ListOf(Text(), min_len=1, optional=True),
    # --- continual RL (rl/) ----------------------------------------------------------------------------------------
    "rl_stream.name": Text(),
    "rl_stream.kind": Choice(("atari", "minatar")),
    "rl_stream.games": ListOf(Text(), min_len=1),
    "rl_stream.steps_per_task": Int(ge=1),
    "rl_stream.episodic_life": Bool(),
    "rl_stream.noop_max": Int(ge=0),
    "rl_stream.frame_skip": Int(ge=1),
    "rl_stream.frame_stack": Int(ge=1),
    "rl_stream.max_frames_per_episode": Int(ge=1) | Choice(("gym_v4",)),
    "rl_stream.channels": Int(ge=1, le=10),
    "rl_stream.sticky_action_prob": _PROBABILITY,
    "rl_stream.max_episode_steps": Int(ge=1),
    "rl_model.features": Int(ge=1),
    "rl_model.filters": Int(ge=1),
    "rl_approach.fisher_minibatches": Int(ge=1),
    "rl_approach.fisher_estimator": Choice(("per_sample", "minibatch_mean")),
    "ppo.lr": Float(gt=0),
    "ppo.adam_eps": Float(gt=0),
    "ppo.linear_lr_decay": Bool(),
    "ppo.num_envs": Int(ge=1),
    "ppo.num_steps": Int(ge=1),
    "ppo.epochs": Int(ge=1),
    "ppo.minibatches": Int(ge=1),
    "ppo.clip": Float(gt=0),
    "ppo.clip_value_loss": Bool(),
    "ppo.value_coef": Float(ge=0),
    "ppo.entropy_coef": Float(ge=0),
    "ppo.gamma": Float(ge=0, le=1),
    "ppo.gae_lambda": Float(ge=0, le=1),
    "ppo.max_grad_norm": Float(gt=0),
    "rl_eval.episodes": Int(ge=1),
    "rl_eval.every_updates": Int(ge=0),
    "rl_eval.max_steps": Int(ge=1, optional=True),
    "rl_eval.episodes_from": Choice(("each_env", "first_to_finish")),
    "rl_eval.gif_frames": Int(ge=0),
    "rl_eval.seed": Int(ge=0),
    # --- stream ----------------------------------------------------------------------------------------------------
    "stream.name": Text(),
    "stream.data_dir": Text(),
    "stream.path": Text(),
    "stream.raw_folder": Text(),
    "stream.seed": Int(ge=0),
    "stream.tasks": ListOf(ListOf(Int(ge=0), min_len=2), min_len=1),
    "stream.class_order": ListOf(Int(ge=0), min_len=2, optional=True),
    "stream.n_tasks": Int(ge=1),
    "stream.max_tasks": Int(ge=1, optional=True),
    "stream.train_per_task": Int(ge=1, optional=True),
    "stream.use": Float(gt=0, le=1) | Int(gt=1, optional=True),  # a fraction of each task's training set, or a count
    "stream.pc_valid": Float(ge=0, lt=1),
    "stream.valid_from_train": Bool(),
    "stream.download": Bool(),
    "stream.verify_checksums": Bool(),
    "stream.first_unpermuted": Bool(),
    "stream.min_angle": Float(),
    "stream.max_angle": Float(),
    "stream.interpolation": Choice(("nearest", "bilinear")),
    "stream.strict_alternation": Bool(),
    "stream.fixed_order": Bool(),
    "stream.relabel": Bool(),
    "stream.relabel_seed": Int(ge=0),
    "stream.n_val_tasks": Int(ge=0),
    "stream.part": Choice(("cl", "val", "all")),
    "stream.normalize": Bool(),
    "stream.notmnist_test_fraction": Float(gt=0, lt=1),
    "stream.shuffle_classes": Bool(),
    "stream.image_size": Int(ge=8),
    "stream.num_workers": Int(ge=0),
    "stream.bgr": Bool(),
    "stream.source": Choice(("auto", "folder", "pickle")),
    "stream.split_seed": Int(ge=0),
    "stream.test_fraction": Float(gt=0, lt=1),
    "stream.input_shape": ListOf(Int(ge=1), min_len=1, optional=True),
    # --- approach: optimizer knobs shared by every approach (conf/approach/sgd.yaml) --------------------------------
    "approach.name": Text(),
    "approach.lr": Float(gt=0),
    "approach.momentum": Float(ge=0, lt=1),
    "approach.weight_decay": Float(ge=0),
    "approach.batch_size": Int(ge=1),
    "approach.eval_batch_size": Int(ge=1),
    # --- approach=blip ---------------------------------------------------------------------------------------------
    "approach.fisher.num_samples": Int(ge=1),
    "approach.fisher.batch_size": Int(ge=1),
    # --- approach=hat ----------------------------------------------------------------------------------------------
    "approach.smax": Float(ge=1),
    "approach.clipgrad": Float(gt=0),
    "approach.thres_cosh": Float(gt=0),
    "approach.thres_emb": Float(gt=0),
    # --- importance regularizers: ewc, online_ewc, si, mas, mas_local, imm_mean, imm_mode (docs/regularizers.md) ---
    "approach.fisher_merge": Choice(("none", "mean")),
    "approach.fisher_estimator": Choice(("exact", "hat_legacy", "blip_legacy", "gem_legacy")),
    "approach.fisher_samples": Int(ge=1, optional=True),
    "approach.fisher_batch_size": Int(ge=1),
    "approach.xi": Float(gt=0),
    "approach.fused_step": Bool(),
    "approach.norm": Choice(("l2", "l1", "vector")),
    "approach.omega_per_sample": Bool(),
    "approach.omega_batch_size": Int(ge=1),
    "approach.omega_samples": Int(ge=1, optional=True),
    "approach.accumulate": Choice(("sum", "sequence")),
    "approach.merge_noop": Bool(),
    # --- approach=lwf ----------------------------------------------------------------------------------------------
    "approach.T": Float(gt=0),
    "approach.warmup_epochs": Int(ge=0),
    "approach.eps": Float(ge=0, lt=1),
    "approach.variant": Choice(("paper", "gem")),
    # --- replay approaches (er, agem, gem, bcl_dual, bcl_single) ---------------------------------------------------
    "approach.n_memories": Int(ge=1),
    "approach.memory_policy": Choice(("ring", "reservoir")),
    "approach.replay_batch_size": Int(ge=1),
    "approach.inner_steps": Int(ge=1),
    "approach.chunk_batches": Int(ge=1),
    "approach.seed": Int(ge=0),
    "approach.memory_strength": Float(ge=0),
    "approach.beta": Float(gt=0, le=1),
    "approach.temperature": Float(gt=0),
    "approach.adapt": Bool(),
    "approach.adapt_lr": Float(gt=0),
    "approach.soft_targets_train_mode": Bool(),
    "approach.interpolate_buffers": Bool(),
    "approach.n_val": Float(gt=0, lt=1),
    "approach.n_meta": Int(ge=1),
    "approach.accumulate_inner_grads": Bool(),
    "approach.fill_with_first_sample": Bool(),
    "approach.update_bn_on_memory": Bool(),
    # --- approach=independent --------------------------------------------------------------------------------------
    "approach.width_divisor": Int(ge=1, optional=True),
    "approach.finetune": Bool(),
}
RULES.update({f"{group}.{key}": rule for group in ("approach", "rl_approach")
              for key, rule in _SHARED_APPROACH_RULES.items()})

# the config sections whose every value has a rule (logger and paths hold free-form third-party settings)
CHECKED_SECTIONS = ("stream", "model", "approach", "trainer", "callbacks", "first_task", "rl_stream", "rl_model",
                    "rl_approach", "ppo", "rl_eval")


_ABSENT = object()


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


# the packages an optional part needs (pyproject.toml extras), by what the config selects
EXTRAS = {("rl_stream.kind", "atari"): ("rl", ("gymnasium", "ale_py")),
          ("rl_stream.kind", "minatar"): ("rl", ("minatar",))}


def check_installed(cfg: DictConfig) -> None:
    """Raise ConfigError when the config selects a part whose optional packages are not installed."""
    from importlib.util import find_spec

    for (key, choice), (extra, modules) in EXTRAS.items():
        if OmegaConf.select(cfg, key, default=None) == choice:
            missing = [m for m in modules if find_spec(m) is None]
            if missing:
                raise ConfigError(f"{key}={choice} needs {', '.join(missing)}, which is not installed: "
                                  f"pip install -e \".[{extra}]\" (or \".[all]\")")


def check_data_root(cfg: DictConfig) -> None:
    """Raise ConfigError when the stream reads files (it has a `data_dir`) from a data root that is not a readable
    folder: one that exists must be a folder this user can list; one that does not must lie under a folder (the
    stream then says which files to put there, or downloads them). The key named is `paths.data_dir` unless the
    stream's own `stream.data_dir` was given."""
    value = OmegaConf.select(cfg, "stream.data_dir", default=None)
    if value is None:  # a stream without files (digits5), or continual RL
        return
    key = "paths.data_dir" if value == OmegaConf.select(cfg, "paths.data_dir", default=None) else "stream.data_dir"
    root = Path(str(value))
    blocker = next(p for p in (root, *root.absolute().parents) if p.exists())
    if not blocker.is_dir():
        what = "is a file, not a folder" if blocker == root else f"cannot be a folder: {blocker} is a file"
        raise ConfigError(f"{key}={value} {what}; give the folder that holds the datasets "
                          f"(CL_DATA_DIR=<folder> or {key}=<folder>)")
    if blocker == root:
        try:
            with os.scandir(root):
                pass
        except OSError as e:
            raise ConfigError(f"{key}={value} cannot be read ({e.strerror or e}); give a folder this user can read "
                              f"(CL_DATA_DIR=<folder> or {key}=<folder>)") from None


def check_options(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value that breaks its rule (config order, so the message is stable), for a
    selected part whose optional packages are missing, or for a data root that cannot be read (check_data_root)."""
    for key, rule in RULES.items():
        try:
            value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
        except MissingMandatoryValue:
            raise ConfigError(f"{key} must be set: pass {key}=<value>") from None
        if value is _ABSENT:
            continue
        value = _plain(value)
        problem = rule.problem(value)
        if problem is not None:
            raise ConfigError(f"{key}={value!r} {problem}")
    check_installed(cfg)
    check_data_root(cfg)
