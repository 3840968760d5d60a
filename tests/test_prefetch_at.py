"""Where a decode layer's prefetch decision runs (`Runtime(prefetch_at=...)`). Left for the next MoE layer's start
("next-layer", the default), with the predictions it reads queued within the layer, it must decide exactly what it
decides within the layer after waiting for them ("layer"): same tokens, same counters, the same loads, evictions,
CPU experts, prefetches and actions in every layer of the trace. And it must really run later: after the next
layer's attention has been queued."""
from __future__ import annotations

import pytest
import torch

from smoe.engine import PREFETCH_AT
from smoe.errors import OptionError, PolicyError
from smoe.plan import Action, Plan
from smoe.policy import ExpertPolicy, register_policy
from smoe.runtime import Runtime
from smoe_test_support import NEW_TOKENS, PROMPTS

POLICIES = ["smoe", "smoe-early", "smoe-ce-cr-pre", "hybrimoe", "moe-infinity"]  # every one that declares its asks
COUNTERS = ("hits", "uses", "loads", "cpu_experts", "substitutions", "skips", "prefetches", "prefetch_used",
            "prefetch_in_topk", "bytes_h2d")


def _run(ckpt, policy: str, at: str, slots: int = 10):
    rt = Runtime(ckpt, policy, device="cpu", cache_experts=slots, batch=len(PROMPTS), trace=True, prefetch_at=at)
    try:
        return rt.generate(PROMPTS, NEW_TOKENS), rt.engine.trace
    finally:
        rt.close()


@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3"])  # every layer MoE; a dense first layer
@pytest.mark.parametrize("policy", POLICIES)
def test_a_decision_left_for_the_next_layer_is_the_one_made_within_it(family, policy, tiny):
    (later, later_trace), (within, within_trace) = (_run(tiny(family), policy, at) for at in PREFETCH_AT)
    assert later.tokens == within.tokens
    for phase in ("prefill", "decode"):
        assert {c: later.metrics[phase][c] for c in COUNTERS} == {c: within.metrics[phase][c] for c in COUNTERS}
    assert len(later_trace) == len(within_trace)
    for a, b in zip(later_trace, within_trace):
        assert (a["step"], a["layer"]) == (b["step"], b["layer"])
        for key in ("loads", "cpu", "evict", "prefetch"):
            assert a[key] == b[key], (a["step"], a["layer"], key)
        assert torch.equal(a["actions"], b["actions"])
        assert (a["standins"] is None) == (b["standins"] is None)
        if a["standins"] is not None:
            assert torch.equal(a["standins"], b["standins"])
    # the comparison covers prefetches, and the trace records the ones decided a layer later
    assert sum(len(r["prefetch"]) for r in later_trace if r["phase"] == "decode") == later.metrics["decode"]["prefetches"] > 0


@pytest.mark.parametrize("at", PREFETCH_AT)
def test_a_decision_left_for_the_next_layer_runs_after_its_attention_is_queued(at, tiny):
    rt = Runtime(tiny("qwen2_moe"), "smoe", device="cpu", cache_experts=10, batch=len(PROMPTS), prefetch_at=at)
    events: list[tuple] = []  # (what, step, decoder layer) in the order the host did them
    engine, layers = rt.engine, rt.model.model.layers
    for i, layer in enumerate(layers):
        layer.self_attn.register_forward_pre_hook(lambda m, args, i=i: events.append(("attention", engine.step, i)))
    decide = rt.policy.prefetch

    def prefetch(view, ctx):
        events.append(("prefetch", view.step, view.layer))
        return decide(view, ctx)

    rt.policy.prefetch = prefetch
    try:
        rt.generate(PROMPTS, 4)
    finally:
        rt.close()
    moe = rt.info.moe_layers
    checked = 0
    for step in range(1, 4):
        for layer in moe[:-1]:  # a decision at the last MoE layer has no later layer to wait for
            decided = events.index(("prefetch", step, layer))
            queued = events.index(("attention", step, layer + 1))
            assert (decided > queued) == (at == "next-layer"), (step, layer)
            checked += 1
        assert events.index(("prefetch", step, moe[-1])) < events.index(("attention", step + 1, 0)) if step < 3 else True
    assert checked == 3 * (len(moe) - 1)


@register_policy("test-undeclared-ask")
class UndeclaredAsk(ExpertPolicy):
    """Every expert resident; its prefetch reads a prediction its `prefetch_asks` does not declare."""

    def setup(self, model, capacity):
        return [(layer, e) for layer in model.moe_layers for e in range(model.num_experts)]

    def plan(self, view):
        return Plan.per_expert(view, {e: Action.HIT for e in view.needed()})

    def prefetch_asks(self, view):
        return ()

    def prefetch(self, view, ctx):
        if view.phase == "decode" and ctx.next_layer is not None:
            ctx.predict(attention=True)
        return None


def test_reading_an_undeclared_prediction_is_the_policys_error(tiny):
    for at in PREFETCH_AT:
        rt = Runtime(tiny("qwen2_moe"), "test-undeclared-ask", device="cpu", cache_experts=1000, batch=1,
                     prefetch_at=at)
        try:
            if at == "layer":  # within the layer a prediction can still be queued when it is read
                assert len(rt.generate(PROMPTS[:1], 3).tokens[0]) == 3
            else:
                with pytest.raises(PolicyError, match="prefetch_asks did not declare"):
                    rt.generate(PROMPTS[:1], 3)
        finally:
            rt.close()


def test_prefetch_at_names_the_accepted_values(tiny):
    with pytest.raises(OptionError, match="prefetch_at='soon'; accepted: next-layer, layer"):
        Runtime(tiny("qwen2_moe"), "smoe", device="cpu", cache_experts=10, prefetch_at="soon")
