"""A decode layer's routed, long-resident experts computed before the policy plans (`Runtime(hits_before_plan=...)`,
grouped decode): the plan's gate weights are applied after it, on the outputs stacked in the plan's order, so the
logits are those of computing them after the plan, to the bit, and every decision is the same. And the experts really
are computed before the plan."""
from __future__ import annotations

import pytest
import torch

from smoe.runtime import Runtime
from smoe_test_support import NEW_TOKENS, PROMPTS, collect_logits

COUNTERS = ("hits", "uses", "loads", "cpu_experts", "substitutions", "skips", "prefetches", "prefetch_used",
            "bytes_h2d")


def _run(ckpt, policy: str, before: bool, events: list | None = None):
    rt = Runtime(ckpt, policy, device="cpu", cache_experts=1000 if policy == "all-gpu" else 10, batch=len(PROMPTS),
                 grouped_experts="gather",
                 hits_before_plan=before)
    if events is not None:  # ("outputs" | "plan", forward pass, layer) in the order the host did them
        engine, outputs, plan = rt.engine, rt.engine._expert_outputs, rt.policy.plan
        rt.engine._expert_outputs = lambda *a: (events.append(("outputs", engine.step, a[0])), outputs(*a))[1]
        rt.policy.plan = lambda view: (events.append(("plan", view.step, view.layer)), plan(view))[1]
    logits, _, cb = collect_logits()
    try:
        return rt.generate(PROMPTS, NEW_TOKENS, on_logits=cb), logits
    finally:
        rt.close()


@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3"])
@pytest.mark.parametrize("policy", ["smoe", "lru", "all-gpu"])  # stand-ins among the hits; plain hits; every expert
def test_hits_computed_before_the_plan_give_the_same_logits_and_decisions(family, policy, tiny):
    (before, logits_before), (after, logits_after) = (_run(tiny(family), policy, b) for b in (True, False))
    assert before.tokens == after.tokens
    assert len(logits_before) == len(logits_after) == NEW_TOKENS
    for a, b in zip(logits_before, logits_after):
        assert torch.equal(a, b)
    for phase in ("prefill", "decode"):
        assert {c: before.metrics[phase][c] for c in COUNTERS} == {c: after.metrics[phase][c] for c in COUNTERS}
    if policy == "smoe":
        assert before.metrics["decode"]["substitutions"] > 0  # stand-ins were stacked with the experts computed ahead


def test_hits_are_computed_before_the_plan_in_decode_only(tiny):
    for before in (True, False):
        events: list = []
        _run(tiny("qwen2_moe"), "lru", before, events)
        planned = {(step, layer): i for i, (what, step, layer) in enumerate(events) if what == "plan"}
        outputs = [(i, step, layer) for i, (what, step, layer) in enumerate(events) if what == "outputs"]
        assert outputs and all(step > 0 for _, step, _ in outputs)  # grouped in decode; the prefill expert by expert
        ahead = [(step, layer) for i, step, layer in outputs if i < planned[(step, layer)]]
        if before:  # in most decode layers (not where fewer than two routed experts are resident)
            assert len(ahead) > len(planned) // 2
        else:
            assert not ahead
