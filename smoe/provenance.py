"""Which code a run ran: a fingerprint of the runtime's and the policies' sources, and the git commit where there is one.

A GPU machine gets a copy of the working tree, often without `.git`, and an A/B runs an older tree beside the
current one: the fingerprint (sha256 over `smoe/` and `baselines/`'s Python files, paths included) tells two runs'
code apart, or shows it the same, with or without git. Records carry it in their `env` (`Runtime.environment()`).
"""
from __future__ import annotations

import hashlib
import subprocess
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("smoe", "baselines")  # what decides and runs; benchmarks and configs only drive it


def source_fingerprint(root: Path) -> str:
    """sha256 over every `*.py` under root/smoe and root/baselines: each file's path relative to root, then its
    bytes, in path order (the first 16 hex digits)."""
    h = hashlib.sha256()
    for path in sorted(p for d in SOURCES for p in (root / d).rglob("*.py")):
        data = path.read_bytes()
        h.update(f"{path.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


def git_commit(root: Path) -> str | None:
    """HEAD's commit, with `+dirty` where tracked files under `SOURCES` differ from it; None without git."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--", *SOURCES],
                               capture_output=True, timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


@cache
def code() -> dict:
    """This process's code: {"sources": fingerprint, "commit": git commit or None}."""
    return {"sources": source_fingerprint(ROOT), "commit": git_commit(ROOT)}
