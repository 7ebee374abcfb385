"""Write one benchmark's section of docs/benchmarks.md, replacing its previous numbers.

Each bench script calls `write_section(name, markdown)`; the section lives between
`<!-- bench:NAME -->` and `<!-- /bench:NAME -->` markers, so scripts never overwrite each other."""
from __future__ import annotations

import datetime
import os
import platform
import re
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
