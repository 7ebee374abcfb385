"""The docs (README.md, docs/*.md) are true to the repository: every repository path they name exists, every link
resolves, no note outside the repository is cited, the README names every recipe, and the sweep layout they give
is the Hydra config's."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import CONF_DIR, ROOT, config_options

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP_LEVEL = ("cl", "data", "rl", "conf", "bench", "tests", "docs")
# a path under one of the repository's top-level folders, anywhere in a doc (prose, inline code, code blocks); not
# the tail of a longer path (`../shared/data/mnist`, `$CL_DATA_DIR/mnist`)
REPO_PATH = re.compile(r"(?<![\w./$~-])((?:%s)/[^\s`'\"()\[\]|,;]*)" % "|".join(TOP_LEVEL))
LINK = re.compile(r"\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
# an inline code span that names another repository's file: `owner/name path[:line]` (docs/recipes.md's citations)
OTHER_REPO = re.compile(r"^(?!(?:%s)/)[\w.-]+/[\w.-]+ \S" % "|".join(TOP_LEVEL))
MD_FILE = re.compile(r"(?<![\w/.-])((?:\.\./|[\w.-]+/)*[\w.-]+\.md)\b")


def _without_other_repos(text: str) -> str:
    """The doc with every inline code span that names another repository's file blanked out."""
    return INLINE_CODE.sub(lambda m: "``" if OTHER_REPO.match(m.group(1)) else m.group(0), text)


def _candidates(path: str) -> list[str]:
    """A named path as glob patterns: `:12`, `:12-30`, `::test_name` and a trailing full stop or colon dropped,
    `<placeholder>` and `…` as *, `{a,b}` expanded."""
    path = re.sub(r"(::\w+|:[\d,-]+)$", "", path.split("#")[0]).rstrip(".:")
    path = re.sub(r"<[^>]*>|…", "*", path)
    patterns = [path]
    while any("{" in p for p in patterns):
        expanded = []
        for p in patterns:
            m = re.search(r"\{([^{}]*)\}", p)
            expanded += [p[:m.start()] + o + p[m.end():] for o in m.group(1).split(",")] if m else [p]
        patterns = expanded
    return patterns


def _exists(path: str, base: Path) -> bool:
    return all(any(base.glob(p.rstrip("/"))) if "*" in p else (base / p).exists() for p in _candidates(path))


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_a_doc_names_exists(doc):
    text = _without_other_repos(doc.read_text())
    missing = [f"{doc.name}:{_line(text, m.start())}: {m.group(1)}" for m in REPO_PATH.finditer(text)
               if not _exists(m.group(1), ROOT)]
    assert not missing, "paths that are not in the repository:\n" + "\n".join(missing)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_of_a_doc_resolves(doc):
    text = doc.read_text()
    targets = [(m.group(1), _line(text, m.start())) for m in LINK.finditer(text)]
    local = [(t, line) for t, line in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    missing = [f"{doc.name}:{line}: {t}" for t, line in local if not _exists(t, doc.parent)]
    assert not missing, "links to nothing:\n" + "\n".join(missing)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_doc_cites_no_note_outside_the_repository(doc):
    """Every .md file named in inline code is in the repository (from its root or from the doc's folder)."""
    text = _without_other_repos(doc.read_text())
    named = [(name.group(1), _line(text, code.start())) for code in INLINE_CODE.finditer(text)
             for name in MD_FILE.finditer(code.group(1))]
    missing = [f"{doc.name}:{line}: {name}" for name, line in named
               if not (_exists(name, ROOT) or _exists(name, doc.parent))]
    assert not missing, "notes that are not in the repository:\n" + "\n".join(missing)


def test_the_path_patterns_see_what_they_should():
    text = ("`cl/outputs/report.py:12` [x](rl.md) `conf/approach/<name>.yaml` `tests/test_blip.py::test_x` "
            "`checkpoints/task_<t>.ckpt` `../shared/data/mnist` `phquang/bilevel-continual-learning data/cifar100.py` "
            "`shared/reference/blip.md` `rl_minatar_{blip,ewc}`")
    assert [m.group(1) for m in REPO_PATH.finditer(_without_other_repos(text))] == [
        "cl/outputs/report.py:12", "conf/approach/<name>.yaml", "tests/test_blip.py::test_x"]
    assert all(_exists(m.group(1), ROOT) for m in REPO_PATH.finditer(_without_other_repos(text)))
    assert not _exists("bench/online_recipes.py", ROOT) and _exists("conf/experiment/rl_{minatar,atari6}.yaml", ROOT)
    assert [m.group(1) for m in MD_FILE.finditer("shared/reference/blip.md and docs/rl.md")] == [
        "shared/reference/blip.md", "docs/rl.md"]


def test_the_readme_names_every_recipe():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in config_options("experiment") if f"`{name}`" not in readme]
    assert not missing, f"README.md's recipe list lacks {missing}"


def test_the_docs_give_the_sweep_layout_of_the_hydra_config():
    sweep = yaml.safe_load((CONF_DIR / "hydra" / "default.yaml").read_text())["sweep"]
    assert sweep["dir"].split("/") == ["multirun", "${now:%Y-%m-%d_%H-%M-%S}"]  # one folder per sweep: <date_time>
    assert "/" not in sweep["subdir"]  # one per job: <job>
    for doc in DOCS:
        for layout in re.findall(r"multirun/((?:<[^>]+>/?)+)", doc.read_text()):
            assert re.fullmatch(r"<date_time>(/<job>)?/?", layout), f"{doc.name}: multirun/{layout}"
