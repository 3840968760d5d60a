"""The lm-eval model `smoe`: log-likelihoods equal the HF model's, whatever the cache holds; lm-eval runs it
end to end on a 10-document local task; the same seed gives the same accuracy."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

lm_eval = pytest.importorskip("lm_eval")  # the `eval` extra (installed by `make test`)
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from smoe.lm_eval_model import SMoELM  # noqa: E402

FAMILY = "qwen2_moe"


def hf_loglikelihood(model, ctx: list[int], cont: list[int]) -> float:
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = model(ids).logits[0, :-1].float().log_softmax(-1)
    return float(logp[len(ctx) - 1 :].gather(1, torch.tensor(cont)[:, None]).sum())


@pytest.mark.parametrize("args", [dict(policy="all-gpu"), dict(policy="lru", cache_experts=4),
                                  dict(policy="on-demand", cache_experts=4)])
def test_loglikelihood_equals_hf(tiny, args):
    path = tiny(FAMILY)
    lm = SMoELM(str(path), batch_size=2, **args)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    reqs = [("The capital of", " Italy is Rome"), ("Hi", " there"), ("A much longer context than the rest", " end")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs)], disable_tqdm=True)
    for (ctx, cont), (ll, _) in zip(reqs, got):
        assert ll == pytest.approx(hf_loglikelihood(ref, lm.tok_encode(ctx), lm.tok_encode(cont)), abs=1e-4)
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("Some text to score",), 0)],
                                       disable_tqdm=True)[0]
    toks = lm.tok_encode("Some text to score")
    assert rolling == pytest.approx(hf_loglikelihood(ref, [lm.eot_token_id], toks), abs=1e-4)
    lm.rt.close()


def write_task(tmp_path):
    """Two local lm-eval tasks over the same 10 documents: multiple choice and generation."""
    import yaml

    docs = [{"question": f"Is {i} even?", "choices": ["yes", "no"], "label": i % 2} for i in range(10)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"validation": str(tmp_path / "data.jsonl")}},
              "validation_split": "validation", "doc_to_text": "Question: {{question}}\nAnswer:"}
    (tmp_path / "mc.yaml").write_text(yaml.safe_dump({
        "task": "tiny_mc", **common, "output_type": "multiple_choice", "doc_to_target": "label",
        "doc_to_choice": "choices", "metric_list": [{"metric": "acc"}]}))
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump({
        "task": "tiny_gen", **common, "output_type": "generate_until", "doc_to_target": "{{choices[label]}}",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 4}, "metric_list": [{"metric": "exact_match"}]}))
    return tmp_path


def test_simple_evaluate_runs_through_the_runtime_and_repeats(tiny, tmp_path):
    tasks = write_task(tmp_path)
    args = f"pretrained={tiny(FAMILY)},policy=smoe,cache_experts=6,alpha=0.5,batch_size=2"
    runs = []
    for _ in range(2):
        res = lm_eval.simple_evaluate(model="smoe", model_args=args, tasks=["tiny_mc", "tiny_gen"],
                                      task_manager=TaskManager(include_path=str(tasks)), limit=10)
        runs.append({t: m for t, m in res["results"].items()})
    assert runs[0]["tiny_mc"]["acc,none"] == runs[1]["tiny_mc"]["acc,none"]
    assert 0.0 <= runs[0]["tiny_mc"]["acc,none"] <= 1.0
    assert "exact_match,none" in runs[0]["tiny_gen"]


def test_eval_command_saves_runtime_counters(tiny, tmp_path):
    from smoe.cli import main

    tasks = write_task(tmp_path)
    out = tmp_path / "eval.json"
    rc = main(["eval", "--model", str(tiny(FAMILY)), "--policy", "smoe-ce-cr", "--cache-experts", "6", "--batch", "2",
               "--tasks", "tiny_mc", "--include-path", str(tasks), "--limit", "10", "--set", "alpha=0.5",
               "--out", str(out)])
    assert rc == 0
    rec = json.loads(out.read_text())
    assert rec["results"]["tiny_mc"]["acc,none"] is not None
    assert rec["runtime"]["prefill"]["uses"] > 0  # every log-likelihood forward went through the runtime


def test_generation_stops_once_every_sequence_met_a_stop_string_with_the_same_answers(tiny):
    lm = SMoELM(str(tiny(FAMILY)), batch_size=2)
    ctxs = ["Question: who?\nAnswer:", "Another one"]
    full = [lm.tok_decode(t) for t in lm.rt.generate([lm.tok_encode(c) for c in ctxs], 40).tokens]
    until = [full[0][6], full[1][9]]  # characters the random model writes early on, one per sequence
    want = [t[: min(t.find(s) for s in until if s in t)] for t in full]
    reqs = [(c, {"until": until, "max_gen_toks": 40}) for c in ctxs]
    got = lm.generate_until([Instance("generate_until", {}, r, i) for i, r in enumerate(reqs)], disable_tqdm=True)
    assert got == want
    assert lm.run_metrics()["decode_steps"] < 39  # stopped early, the answers unchanged
    lm.rt.close()
