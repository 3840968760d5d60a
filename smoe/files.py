"""Writing result files so that an interrupted run never leaves a half-written one behind."""
from __future__ import annotations

import csv
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


def write_csv(path: str | Path, rows: list[dict], fieldnames: list[str] | None = None) -> None:
    """Write dict rows as CSV (columns: `fieldnames`, else the first row's keys) through a temporary file beside
    `path`, renamed into place, as `write_json` does."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fieldnames or list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
