"""The code fingerprint a record carries: the same for the same sources wherever they lie, different when any
runtime or policy source differs, and blind to what only drives them (benchmarks)."""
from __future__ import annotations

import shutil

from smoe import provenance


def test_source_fingerprint_follows_the_runtime_and_policy_sources(tmp_path):
    root = provenance.ROOT
    here = provenance.source_fingerprint(root)
    copy = tmp_path / "tree"
    for d in provenance.SOURCES:
        shutil.copytree(root / d, copy / d, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    assert provenance.source_fingerprint(copy) == here  # the same sources elsewhere, no git
    (copy / "benchmarks").mkdir()
    (copy / "benchmarks/extra.py").write_text("x = 1\n")
    assert provenance.source_fingerprint(copy) == here  # benchmarks only drive the runtime
    policy = copy / "baselines/lru.py"
    policy.write_text(policy.read_text() + "\n")
    changed = provenance.source_fingerprint(copy)
    assert changed != here  # one byte in a policy
    policy.rename(copy / "baselines/lru_renamed.py")
    assert provenance.source_fingerprint(copy) not in (here, changed)  # a path is part of it
    assert provenance.git_commit(copy) is None  # no repository there


def test_code_names_this_checkouts_commit():
    code = provenance.code()
    assert code["sources"] == provenance.source_fingerprint(provenance.ROOT)
    if (provenance.ROOT / ".git").exists():  # a clean clone (CI) has one
        assert code["commit"] and len(code["commit"].split("+")[0]) == 40
