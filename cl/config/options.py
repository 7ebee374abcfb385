"""What every option of the composed config may hold: type, range or choices, checked before anything heavy is
imported (torch, Lightning), so that a mistyped or out-of-range value stops within a second or two with one line
that names the key, the value and what is allowed.

Each option's rule lives with what it configures: `@options(...)` on the class or function a config node's
`_target_` names (an approach, a trunk, a stream, a callback), inherited by subclasses; the run's own options and
Lightning's Trainer arguments are RUN_RULES here. rules_of reads the declarations from the source files (ast), so
the check imports nothing heavy. A key absent from the composed config (an option of a part not selected) is
skipped. Every value of every shipped config file has a rule (tests/test_options.py checks it): a new knob gets
its rule on its class.
"""
from __future__ import annotations

import ast
import functools
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


PROBABILITY = Float(ge=0, lt=1)


def options(**rules: Rule):
    """Declare the config options of a class or function that a config node builds (its `_target_`): keyword =
    the option's key relative to that node (`**{"fisher.num_samples": Int(ge=1)}` for a nested one), value = its
    Rule. A class inherits its bases' rules and may override them; two targets may give one key different rules.
    The check reads these declarations from the source (rules_of), before anything heavy is imported, so the
    arguments must be Rule expressions built from this module's names, or names bound to such expressions."""
    def declare(target):
        target.__options__ = rules
        return target
    return declare


# the run's own options, and those of the nodes built by other packages (Lightning's Trainer); every other node's
# rules are declared with @options on what its `_target_` names
RUN_RULES: dict[str, Rule] = {
    "seed": Int(ge=0, lt=2**32),
    "resume": Bool(),
    "protocol": Choice(("test", "validation")),
    "validation_tasks": Int(ge=1),
    "eval_max_samples": Int(ge=1, optional=True),
    "checkpoint_every_n_steps": Int(ge=1, optional=True),
    "first_task.max_epochs": Int(ge=1, optional=True),
    "first_task.lr": Float(gt=0, optional=True),
    "first_task.batch_size": Int(ge=1, optional=True),
    # applied by the pipeline to any built stream (cl/config/checks.py PIPELINE_STREAM_OPTIONS)
    "stream.use": Float(gt=0, le=1) | Int(gt=1, optional=True),  # a fraction of each task's training set, or a count
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
}

_ROOT = Path(__file__).resolve().parents[2]  # the project: the packages whose sources declare rules


@functools.lru_cache(maxsize=None)
def _module_tree(module: str) -> ast.Module | None:
    """The parsed source of a project module; None for a module outside the project (torch, Lightning)."""
    parts = module.split(".")
    for path in (_ROOT.joinpath(*parts[:-1], parts[-1] + ".py"), _ROOT.joinpath(*parts, "__init__.py")):
        if path.is_file():
            return ast.parse(path.read_text(), str(path))
    return None


def _definition(module: str, name: str) -> tuple[str, ast.AST] | None:
    """Where a top-level `name` of `module` is defined, following `from x import name`: (module, node)."""
    tree = _module_tree(module)
    for node in tree.body if tree else ():
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            return module, node
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return module, node.value
        if isinstance(node, ast.ImportFrom) and node.module and any((a.asname or a.name) == name for a in node.names):
            original = next(a.name for a in node.names if (a.asname or a.name) == name)
            return _definition(node.module, original)
    return None


class _Names(dict):
    """The names a declaration may use: this module's rule types, then the declaring module's bindings."""

    def __init__(self, module: str):
        super().__init__({n: globals()[n] for n in ("Int", "Float", "Choice", "Bool", "Text", "ListOf",
                                                     "PROBABILITY")})
        self.module = module

    def __missing__(self, name):
        found = _definition(self.module, name)
        if found is None or not isinstance(found[1], ast.expr):
            raise NameError(f"{self.module}: @options uses {name}, which is not a rule expression")
        return _evaluate(found[1], found[0])


def _evaluate(expr: ast.expr, module: str):
    return eval(compile(ast.Expression(expr), module, "eval"), {"__builtins__": {}}, _Names(module))


@functools.lru_cache(maxsize=None)
def declared_rules(target: str) -> dict[str, Rule]:
    """The rules @options declares on `target` (a dotted `_target_`) and, for a class, on its bases."""
    module, _, name = target.rpartition(".")
    found = _definition(module, name) if module else None
    if found is None or not isinstance(found[1], (ast.ClassDef, ast.FunctionDef)):
        return {}
    module, node = found
    rules: dict[str, Rule] = {}
    for base in reversed(node.bases if isinstance(node, ast.ClassDef) else []):
        if isinstance(base, ast.Name):
            rules.update(declared_rules(f"{module}.{base.id}"))
    for decorator in node.decorator_list:
        if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "options":
            for keyword in decorator.keywords:
                value = _evaluate(keyword.value, module)
                rules.update(value if keyword.arg is None else {keyword.arg: value})
    return rules


def rules_of(cfg: DictConfig) -> dict[str, Rule]:
    """Every rule that applies to the composed config `cfg`: the run's (RUN_RULES) and, for each node of the checked
    sections that names a `_target_`, that target's, keyed by the node's path (so a message names the group the
    user typed: `approach.lamb`, `rl_approach.lamb`)."""
    rules = dict(RUN_RULES)

    def visit(node: DictConfig, prefix: str):
        target = node._get_node("_target_") if "_target_" in node else None
        if target is not None and isinstance(target._value(), str):
            rules.update({prefix + key: rule for key, rule in declared_rules(target._value()).items()})
        for key in node:
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
                visit(child, f"{prefix}{key}.")

    for section in CHECKED_SECTIONS:
        node = cfg._get_node(section) if section in cfg else None
        if isinstance(node, DictConfig) and not node._is_none():
            visit(node, section + ".")
    return rules


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
    for key, rule in rules_of(cfg).items():
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
