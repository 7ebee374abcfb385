"""Write one benchmark's section of docs/benchmarks.md, replacing its previous numbers.

Each bench script calls `publish(parser, args, name, markdown)`; the section lives between
`<!-- bench:NAME -->` and `<!-- /bench:NAME -->` markers, so scripts never overwrite each other. Only the canonical
invocation (every option at its default; where the data live does not count) writes the published section: a run
with other arguments prints its section and leaves docs/benchmarks.md alone."""
from __future__ import annotations

import datetime
import os
import platform
import argparse
import re
import sys
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = ("# Benchmarks\n\nEvery figure below was printed by the `bench/` command named in its section, on the "
          "machine it names; rerun the command to refresh the section.\n")


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {gpu}")


def write_section(name: str, markdown: str, command: str) -> None:
    stamp = datetime.date.today().isoformat()
    body = (f"<!-- bench:{name} -->\n{markdown.strip()}\n\n"
            f"_Command: `{command}` — {machine()} — {stamp}._\n<!-- /bench:{name} -->")
    text = DOC.read_text() if DOC.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: body, text) if pattern.search(text) else f"{text.rstrip()}\n\n{body}\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


# options that say where things are or which sections run, not how anything is measured
LOCATION_OPTIONS = ("data_dir", "out", "part")


def publish(parser: argparse.ArgumentParser, args: argparse.Namespace, name: str, markdown: str) -> bool:
    """Print the section; write it to docs/benchmarks.md only for the canonical invocation. Returns whether it
    was written."""
    print(markdown, flush=True)
    changed = [key for key, value in vars(args).items()
               if key not in LOCATION_OPTIONS and value != parser.get_default(key)]
    if changed:
        flags = ", ".join(f"--{k.replace('_', '-')}" if not k.startswith("overrides") else "overrides" for k in changed)
        print(f"\n(not written to docs/benchmarks.md: {flags} differ from the canonical run)", flush=True)
        return False
    write_section(name, markdown, f"python bench/{Path(sys.argv[0]).name}")
    return True
