"""Checks that run before any work: option values against their rules, option names against the constructors they
feed, and resume consistency."""
from __future__ import annotations

import copy
import difflib
import inspect
import itertools
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from cl.config.options import check_options
from cl.errors import ConfigError

SECTIONS = ("stream", "model", "approach", "trainer", "callbacks", "rl_stream", "rl_model", "rl_approach", "ppo",
            "rl_eval")
# options any stream accepts, applied by the pipeline to the built stream (cl/run/supervised.py build), not passed to it
PIPELINE_STREAM_OPTIONS = ("use",)
# what may differ when a run is resumed (`resume=true`): where its data are read from (paths.*, also a stream's
# `data_dir`) and whether a missing copy is downloaded, how often it checkpoints and shows progress, which devices it
# runs on (as many as before), and Hydra's own settings (hydra.*: the run dir, Hydra's logging). Anything else is the
# run's: its saved value is used, and an override that would change it is an error.
RESUME_ALLOWED = ("paths", "stream.download", "checkpoint_every_n_steps", "trainer.devices",
                  "callbacks.progress_bar.refresh_rate")


def _options(target) -> tuple[list[str], bool]:
    """The keyword options `target` takes and whether it also takes any others (**kwargs). A class
    whose __init__ passes **kwargs up the hierarchy (e.g. an approach to its base's optimizer options) takes the
    options of every __init__ up to the first without **kwargs."""
    chain = [target]
    if inspect.isclass(target):
        chain = [c for c in inspect.getmro(target) if "__init__" in vars(c)]
    parameters = []
    for item in chain:
        sig = inspect.signature(item.__init__ if inspect.isclass(item) else item)
        parameters += [k for k, p in sig.parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
                       and k not in parameters]
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            return parameters, False
    return parameters, True


def check_node(node: DictConfig, path: str, applied: tuple[str, ...] = ()):
    """Recursively check every `_target_` node for options its target does not take (`applied`: options of this
    node that are not passed to its target); values are checked by their rules (cl/config/options.py)."""
    if "_target_" in node:
        try:
            target = hydra.utils.get_object(node._target_)
        except Exception as e:
            raise ConfigError(f"{path}._target_={node._target_!r} cannot be imported ({e})") from None
        if callable(target):
            parameters, has_kwargs = _options(target)
            for key in node:
                if key.startswith("_") or key in applied:
                    continue
                if key not in parameters and not has_kwargs:
                    known = ", ".join(k for k in parameters if k not in ("self", "net", "input_shape"))
                    raise ConfigError(f"{path} has no option {key!r}; its options are: {known}")
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            check_node(child, f"{path}.{key}")


def check_config(cfg: DictConfig):
    """Every value within its rule (cl/config/options.py; train.py checked them already, a run started in-process
    had not), and every key of a built section one that its target takes."""
    check_options(cfg)
    for section in SECTIONS:
        node = cfg.get(section)
        if isinstance(node, DictConfig):
            check_node(node, section, PIPELINE_STREAM_OPTIONS if section == "stream" else ())


def resume_allowed(key: str) -> bool:
    """Whether config key `key` may differ from the saved run's on resume (RESUME_ALLOWED)."""
    if key == "resume" or key.endswith(".data_dir") or key.startswith(("hydra.", "hydra/")):
        return True
    return any(key == a or key.startswith(a + ".") for a in RESUME_ALLOWED)


def _typed_overrides() -> list[str]:
    """This command line's task overrides that are not the run's saved ones (cl/run/run_dir.py with_saved_overrides)
    and not of keys that may change on resume."""
    from hydra.core.hydra_config import HydraConfig

    from cl.run.run_dir import SAVED_OVERRIDES

    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task
            if o not in SAVED_OVERRIDES and not resume_allowed(o.split("=", 1)[0].lstrip("+~"))]


_ABSENT = object()


def _differences(old, new, prefix: str = "") -> list[str]:
    """The dotted keys at which two plain configs differ (a key only one has counts)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [*old, *(k for k in new if k not in old)]
        return [d for k in keys for d in _differences(old.get(k, _ABSENT), new.get(k, _ABSENT),
                                                      f"{prefix}.{k}" if prefix else str(k))]
    return [] if old == new else [prefix]


def _lookup(config: dict, key: str):
    for part in key.split("."):
        if not isinstance(config, dict) or part not in config:
            return _ABSENT
        config = config[part]
    return config


def _comparable(cfg: DictConfig, saved: dict) -> dict:
    """`cfg` resolved as plain data, with what a resume changes by itself as the saved run had it: `resume` and
    the paths (a run dir moved or a data root given anew; their interpolations follow)."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.resume = saved.get("resume", False)
        for key, value in (saved.get("paths") or {}).items():
            OmegaConf.update(cfg, f"paths.{key}", value, merge=False, force_add=True)
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], (DictConfig, ListConfig)) else cfg[k]
            for k in cfg if k != "hydra"}


def _as_saved(value, saved: dict, key: str = ""):
    """A saved value to put back into the config, with the interpolations `_comparable` resolved made again (a
    logger's `resume: ${resume}` and `save_dir: ${paths.output_dir}`, a stream's data dir)."""
    if isinstance(value, dict):
        return {k: _as_saved(v, saved, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_saved(v, saved) for v in value]
    if key == "resume" and value == saved.get("resume", False):
        return "${resume}"
    for name, path in (saved.get("paths") or {}).items():
        if isinstance(value, str) and value == path:
            return "${paths." + name + "}"
    return value


def _device_count(devices) -> int | None:
    """How many devices a `trainer.devices` value asks for (None: depends on the machine, e.g. "auto" or -1)."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str):
        parts = [p for p in devices.split(",") if p.strip()]
        if "," in devices:
            return len(parts)
        devices = int(devices) if devices.strip().isdigit() else None
    return devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0 else None


def _check_devices(saved: dict, current: dict, run_dir: Path):
    old, new = _lookup(saved, "trainer.devices"), _lookup(current, "trainer.devices")
    if old == new or old is _ABSENT or new is _ABSENT:
        return
    n_old, n_new = _device_count(old), _device_count(new)
    if n_old is None or n_old != n_new:
        raise ConfigError(f"resume: trainer.devices={new} is {n_new or 'an unknown number of'} device(s), but the run "
                          f"in {run_dir} trained on trainer.devices={old} ({n_old or 'an unknown number'}): its "
                          f"batches would be split differently; give as many devices as it had, or start a new run dir")


def check_resume_config(cfg: DictConfig, previous: dict | None, run_dir: Path):
    """A resumed run is the same run: it continues with the saved config (results.json `config`), also where this
    command line composes another one (a run started before its overrides were saved, a config file edited since);
    only the keys of RESUME_ALLOWED may differ. An override on this command line that would change anything else
    is an error (it would silently mix two experiments, or rename the run in W&B)."""
    if previous is None:
        raise ConfigError(f"resume=true but {run_dir} holds no results.json, so no run was saved there (a run "
                          f"writes it as soon as it starts training); set hydra.run.dir to the folder of the run to "
                          f"continue")
    saved = previous["config"]
    current = _comparable(cfg, saved)
    _check_devices(saved, current, run_dir)
    differences = _differences(saved, current)
    changed = [key for key in differences if not resume_allowed(key)]
    if not changed:
        return
    typed = _typed_overrides()
    if typed:
        sections = {key.split(".")[0]: [k for k in changed if k.split(".")[0] == key.split(".")[0]] for key in changed}
        shown = ", ".join(keys[0] if len(keys) == 1 else f"{section}.* ({len(keys)} keys)"
                          for section, keys in sections.items())
        raise ConfigError(f"resume: {', '.join(typed)} differs from the run in {run_dir} (it changes {shown}); a "
                          f"resumed run continues with its saved config, where only {', '.join(RESUME_ALLOWED)} and "
                          f"hydra.* may change: drop that override to continue the saved run, or start a new run dir")
    # the saved values; also those of allowed keys this config lacks (a saved stream's data dir)
    missing = [key for key in differences if resume_allowed(key) and _lookup(current, key) is _ABSENT]
    with open_dict(cfg):
        for key in changed + missing:
            value = _lookup(saved, key)
            if value is not _ABSENT:
                OmegaConf.update(cfg, key, _as_saved(value, saved), merge=False, force_add=True)
                continue
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if isinstance(node, DictConfig) and leaf in node:
                del node[leaf]


# --- names on the command line ------------------------------------------------------------------------------------
def _did_you_mean(name: str, candidates, prefix: str = "") -> str:
    close = difflib.get_close_matches(name, [str(c) for c in candidates], n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(prefix + c for c in close)}?" if close else ""


def _listed(names, limit: int = 25) -> str:
    names = [str(n) for n in names]
    return ", ".join(names[:limit]) + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _group_values(override) -> list[str]:
    """The config group options an override of a group selects: one, a list (`logger=[csv,wandb]`) or a sweep's
    choices (`-m approach=sgd,ewc`); none that can be told without composing (a glob)."""
    try:
        value = list(override.sweep_string_iterator()) if override.is_sweep_override() else override.value()
    except Exception:
        return []
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, str)]


def _missing_key(cfg: DictConfig, override, loader) -> str | None:
    """What is wrong with `override` (`key=value` or `~key`) when `cfg` has no such key, None when it has one or
    when it cannot be told (a list, an interpolation on the way)."""
    key = override.key_or_group
    parts, node = key.split("."), cfg
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or node._is_none() or node._is_interpolation():
            return None
        if part in list(node.keys()):
            node = node._get_node(part)
            continue
        line = override.input_line
        if i == 0:
            if loader.repository.group_exists(part):
                options = loader.get_group_options(part)
                return (f"{line}: {part} is a config group this command line does not select; select one first with "
                        f"{part}=<option> (options: {_listed(options)})")
            names = sorted(set(map(str, node.keys())) | set(loader.list_groups("")))
            return f"{line}: no config group or key {part!r}{_did_you_mean(part, names)}"
        parent = ".".join(parts[:i])
        choice = OmegaConf.select(cfg, f"hydra.runtime.choices.{parent}", default=None)
        where = f"{parent} ({parent}={choice})" if isinstance(choice, str) else parent
        keys = [str(k) for k in node.keys()]
        hint = _did_you_mean(part, keys, prefix=parent + ".") or f"; its keys: {_listed(keys)}"
        added = "" if override.is_delete() else f" (a new key is added with +{line})"
        return f"{line}: no key {part!r} in {where}{hint}{added}"
    return None


def unknown_name(overrides: list[str], loader, config_name: str, max_compositions: int = 16) -> str | None:
    """The error line for the first override of a command line that names a config group option or a config key
    that does not exist (`approach=ewcc`, `approach.lamda=5000`), with the closest valid names; None when every
    name exists, or when that cannot be told (Hydra then reports the problem itself). `+key=value` adds a key and
    is not checked. `loader` is Hydra's config loader, `overrides` the command line's (sweeps allowed)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # a syntax error: Hydra says where
        return None
    groups = [o for o in parsed if loader.repository.group_exists(o.key_or_group)]
    for override in groups:
        if override.is_delete():
            continue
        options = loader.get_group_options(override.key_or_group)
        for value in _group_values(override):
            if value not in options:
                group = override.key_or_group
                hint = _did_you_mean(value, options, prefix=group + "=") or f"; its options: {_listed(options)}"
                return f"{group}={value}: no option {value!r} in config group {group}{hint}"
    keys = [o for o in parsed if o not in groups and not (o.is_add() or o.is_force_add())]
    if not keys:
        return None
    # the configs this command line composes (one per combination of the group choices a sweep makes), without
    # its key overrides: each key must exist in each of them
    added = [o.input_line for o in parsed if o not in groups and (o.is_add() or o.is_force_add())
             and not o.is_sweep_override()]
    choices = [[f"{o.get_key_element()}={v}" for v in _group_values(o)] if o.is_sweep_override() else [o.input_line]
               for o in groups]
    for combination in itertools.islice(itertools.product(*choices), max_compositions):
        try:
            cfg = loader.load_configuration(config_name, [*combination, *added], RunMode.RUN, from_shell=True)
        except Exception:
            return None
        for override in keys:
            problem = _missing_key(cfg, override, loader)
            if problem is not None:
                return problem
    return None
