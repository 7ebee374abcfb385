"""Checks that run before any work: option types against the constructors they feed, and resume consistency."""
from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from cl.errors import ConfigError

SECTIONS = ("stream", "model", "approach", "trainer", "callbacks", "rl_stream", "rl_model", "rl_approach", "ppo",
            "rl_eval")
# options any stream accepts, applied by the pipeline to the built stream (cl/pipeline.py build), not passed to it
PIPELINE_STREAM_OPTIONS = ("use",)
# what defines the experiment: a resumed run must use the saved values
RESUME_KEYS = ("stream", "model", "approach", "seed", "callbacks", "trainer.max_epochs", "first_task", "protocol",
               "validation_tasks", "rl_stream", "rl_model", "rl_approach", "ppo", "rl_eval")
_SIMPLE = (int, float, bool, str)


def _type_hints(target) -> dict:
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references in third-party code: skip the type check
        return {}


def _accepts(hint, value) -> bool | None:
    """True/False when `hint` is a simple type we can check, None when we cannot tell."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        answers = [_accepts(h, value) for h in typing.get_args(hint)]
        if any(a is True for a in answers):
            return True
        return None if any(a is None for a in answers) else False
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        return isinstance(value, (list, tuple, ListConfig))
    return None


def _type_name(hint) -> str:
    if typing.get_origin(hint) is None and hasattr(hint, "__name__"):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _options(target) -> tuple[list[str], bool, dict]:
    """The keyword options `target` takes, whether it also takes any others (**kwargs), and their type hints. A class
    whose __init__ passes **kwargs up the hierarchy (e.g. an approach to its base's optimizer options) takes the
    options of every __init__ up to the first without **kwargs."""
    chain = [target]
    if inspect.isclass(target):
        chain = [c for c in inspect.getmro(target) if "__init__" in vars(c)]
    parameters, hints = [], {}
    for item in chain:
        sig = inspect.signature(item.__init__ if inspect.isclass(item) else item)
        parameters += [k for k, p in sig.parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
                       and k not in parameters]
        hints = {**_type_hints(item), **hints}
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            return parameters, False, hints
    return parameters, True, hints


def check_node(node: DictConfig, path: str, applied: tuple[str, ...] = ()):
    """Recursively check every `_target_` node: unknown options and wrongly typed values (`applied`: options of
    this node that are not passed to its target)."""
    if "_target_" in node:
        try:
            target = hydra.utils.get_object(node._target_)
        except Exception as e:
            raise ConfigError(f"{path}._target_={node._target_!r} cannot be imported ({e})") from None
        if callable(target):
            parameters, has_kwargs, hints = _options(target)
            for key in node:
                if key.startswith("_") or key in applied:
                    continue
                if key not in parameters and not has_kwargs:
                    known = ", ".join(k for k in parameters if k not in ("self", "net", "input_shape"))
                    raise ConfigError(f"{path} has no option {key!r}; its options are: {known}")
                value = OmegaConf.select(node, key)
                if key in hints and not isinstance(value, DictConfig) and _accepts(hints[key], value) is False:
                    raise ConfigError(f"{path}.{key}={value!r} has the wrong type: expected {_type_name(hints[key])}")
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            check_node(child, f"{path}.{key}")


def check_config(cfg: DictConfig):
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed={cfg.seed!r} must be an integer")
    for section in SECTIONS:
        node = cfg.get(section)
        if isinstance(node, DictConfig):
            check_node(node, section, PIPELINE_STREAM_OPTIONS if section == "stream" else ())


def _overridden(prefix: str) -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    keys = [o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]
    return [k for k in keys if k == prefix or k.startswith(prefix + ".") or prefix.startswith(k + ".")]


def _without_data_dir(value):
    if isinstance(value, dict):
        return {k: _without_data_dir(v) for k, v in value.items() if k != "data_dir"}
    return value


def check_resume_config(cfg: DictConfig, previous: dict | None, run_dir: Path):
    """A resumed run continues with the saved experiment config; an explicit override that contradicts it is an
    error (it would silently mix two experiments)."""
    if previous is None:
        raise ConfigError(f"resume=true but {run_dir} holds no results.json, so no run was saved there (a run "
                          f"writes it as soon as it starts training); set hydra.run.dir to the folder of the run to "
                          f"continue")
    saved = OmegaConf.create(previous["config"])
    for key in RESUME_KEYS:
        old = OmegaConf.select(saved, key)
        new = OmegaConf.select(cfg, key)
        old_c = _without_data_dir(OmegaConf.to_container(old) if isinstance(old, DictConfig) else old)
        new_c = _without_data_dir(OmegaConf.to_container(new, resolve=True) if isinstance(new, DictConfig) else new)
        if old_c == new_c:
            continue
        conflicts = _overridden(key)
        if conflicts:
            raise ConfigError(f"resume: {', '.join(conflicts)} differs from the run in {run_dir}; drop that "
                              f"override to continue the saved run, or start a new run dir")
        with open_dict(cfg):
            if isinstance(old, DictConfig) and isinstance(new, DictConfig) and "data_dir" in new:
                old = OmegaConf.merge(old, {"data_dir": new.data_dir})
            OmegaConf.update(cfg, key, old, merge=False)
