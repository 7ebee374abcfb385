"""Every option of every shipped config has a rule (declared with @options on what it configures, or the run's own in
cl/config/options.py), every rule rejects a value outside it with one line naming the key as the user typed it, rules
are scoped to the selected part, and the CLI reports a bad value before the heavy imports."""
from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import DictConfig, OmegaConf

from cl.errors import ConfigError
from cl.config.options import CHECKED_SECTIONS, AnyOf, Bool, Choice, ListOf, Number, Text, check_options, rules_of
from tests.conftest import ROOT, compose_config, config_options

GROUPS = ("stream", "model", "approach", "trainer", "callbacks", "experiment", "debug", "rl_approach", "rl_stream",
          "rl_model", "ppo", "rl_eval")


def leaves(node: DictConfig, prefix: str = ""):
    for key in node:
        if str(key).startswith("_"):
            continue
        path = f"{prefix}{key}"
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            yield from leaves(child, path + ".")
        else:
            yield path


def every_selection() -> list[str]:
    return [f"{g}={o}" for g in GROUPS for o in config_options(g)]


_COMPOSED: dict[str, DictConfig] = {}
# the one mandatory value (???) of these selections
MANDATORY = {"stream=gem_file": ["stream.path=x"], "experiment=mas_tinyimagenet4": ["model.trunk.pretrained=x"]}


def composed(selection: str) -> DictConfig:
    """The composed config of one group option (cached: composing takes a tenth of a second)."""
    if selection not in _COMPOSED:
        extra = MANDATORY.get(selection, [])
        _COMPOSED[selection] = compose_config([selection, *extra], "/tmp/unused")
    return _COMPOSED[selection].copy()


def checked_keys(cfg: DictConfig) -> list[str]:
    return [k for section in CHECKED_SECTIONS if section in cfg for k in leaves(cfg[section], section + ".")]


def outside(rule) -> object:
    """A value that `rule` rejects."""
    if isinstance(rule, AnyOf):
        return "not-a-value" if not any(isinstance(r, Text) for r in rule.rules) else [[]]
    if isinstance(rule, Number):
        for bound, value in ((rule.ge, lambda b: b - 1), (rule.gt, lambda b: b), (rule.le, lambda b: b + 1),
                             (rule.lt, lambda b: b)):
            if bound is not None:
                v = value(bound)
                return int(v) if rule.kind is int else float(v)
        return "abc"
    if isinstance(rule, Choice):
        return "no_such_choice"
    if isinstance(rule, Bool):
        return "maybe"
    if isinstance(rule, ListOf):
        return "not-a-list"
    return [1, 2]  # Text


@pytest.mark.parametrize("selection", every_selection())
def test_every_rule_rejects_a_value_outside_it_with_one_line(selection):
    base = composed(selection)
    rules = rules_of(base)
    keys = [k for k in rules if OmegaConf.select(base, k, default="<absent>") != "<absent>"]
    assert keys
    for key in keys:
        rule = rules[key]
        bad = outside(rule)
        assert rule.problem(bad) is not None
        cfg = base.copy()
        OmegaConf.update(cfg, key, bad, merge=False)
        with pytest.raises(ConfigError) as err:
            check_options(cfg)
        message = str(err.value)
        assert message.startswith(f"{key}=") and "\n" not in message


def test_a_rule_lives_with_its_part_and_the_message_names_the_group_typed():
    cfg = composed("experiment=rl_minatar_ewc")
    OmegaConf.update(cfg, "rl_approach.lamb", -1.0, merge=False)
    with pytest.raises(ConfigError, match=r"^rl_approach\.lamb=-1\.0 is out of range"):
        check_options(cfg)
    assert "approach.beta" not in rules_of(composed("approach=sgd"))  # no rule for a part not selected


@pytest.mark.parametrize("value,expected", [
    ("approach.lr=abc", "approach.lr='abc' has the wrong type: expected float"),
    ("approach.batch_size=0", "approach.batch_size=0 is out of range: must be an integer >= 1"),
])
def test_cli_reports_a_bad_value_before_the_heavy_imports(value, expected, tmp_path):
    """One line, exit 1, and neither torch nor Lightning imported by then (they take seconds to import)."""
    probe = (f"import runpy, sys\nsys.argv = ['train.py', {value!r}, 'hydra.run.dir={tmp_path}']\n"
             "try:\n    runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit as e:\n"
             "    print('exit', e.code, 'heavy' if {'torch', 'pytorch_lightning'} & set(sys.modules) else 'light')\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stdout.split()[-3:] == ["exit", "1", "light"]


# --- optional parts (pyproject.toml extras) ------------------------------------------------------------------------
def test_optional_parts_are_extras_and_the_test_install_takes_them():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    for package in ("gymnasium", "ale-py", "minatar", "hydra-joblib-launcher", "hydra-optuna-sweeper"):
        assert package not in base  # a supervised-only install does not pull them
    assert any(d.startswith("ale-py") for d in extras["rl"]) and any("optuna" in d for d in extras["sweeps"])
    assert "cl-pipeline[rl,sweeps]" in extras["dev"]  # the README's test command installs everything the tests use


@pytest.mark.parametrize("experiment,module", [("rl_atari6_blip", "ale_py"), ("rl_minatar_blip", "minatar")])
def test_a_selected_part_without_its_extra_stops_with_one_line(experiment, module, tmp_path, monkeypatch):
    import importlib.util

    cfg = compose_config([f"experiment={experiment}"], tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(ConfigError) as err:
        check_options(cfg)
    assert f"needs {module}" in str(err.value) and 'pip install -e ".[rl]"' in str(err.value)
    assert "\n" not in str(err.value)
