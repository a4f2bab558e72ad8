"""Files written whole or not at all: a reader (a resumed run, the next job) never sees half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(path: str | Path, value) -> None:
    """`value` as indented JSON at `path`: written beside it, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)
