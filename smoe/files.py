"""Writing result files so that an interrupted run never leaves a half-written one behind."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(path: str | Path, obj) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)
