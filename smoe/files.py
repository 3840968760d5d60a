"""Writing result files so that an interrupted run never leaves a half-written one behind; reading run records."""
from __future__ import annotations

import csv
import gzip
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


def read_jsonl(path: str | Path) -> list:
    """The records of a JSON-lines file, plain (`.jsonl`, as `paper_shape.py` appends them) or gzip-compressed
    (`.jsonl.gz`, as the measured runs are committed: an eighth of the size)."""
    path = Path(path)
    with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as f:
        return [json.loads(line) for line in f if line.strip()]


def env_file(path: str | Path) -> Path:
    """The environment file `{stem}_env.json` that `paper_shape.py` writes beside its records `{stem}.jsonl`
    (committed as `{stem}.jsonl.gz`)."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".gz").removesuffix(".jsonl") + "_env.json")
