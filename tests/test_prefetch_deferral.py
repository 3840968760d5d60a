"""A policy that declares the predictions its prefetch reads (`ExpertPolicy.predictions`) has them computed with
the layer and decides its prefetch at the start of the next MoE layer (`Engine.finish_prefetch`), after the host has
queued that layer's attention. The decision must be the one taken in the layer: same tokens, counters and executed
plans as the same policy left undeclared (which decides in place)."""
from __future__ import annotations

import pytest

from baselines.hybrimoe import HybriMoE
from smoe.errors import PolicyError
from smoe.policies.smoe import SMoE
from smoe.policy import register_policy
from smoe.runtime import Runtime
from smoe_test_support import PROMPTS


@register_policy("test-smoe-undeclared", replace="substitute", prefetch_mode="attention", balance=True)
class UndeclaredSMoE(SMoE):
    def predictions(self, view):
        return None


@register_policy("test-hybrimoe-undeclared")
class UndeclaredHybriMoE(HybriMoE):
    def predictions(self, view):
        return None


def _run(model, policy: str, batch: int):
    """Tokens, counters and per-layer executed plans of a short generation with a small cache; and the order of
    the decode attentions and prefetch decisions, [("attn" | "prefetch", layer)]."""
    rt = Runtime(model, policy, device="cpu", cache_experts=9, batch=batch, trace=True)
    events: list[tuple[str, int]] = []
    try:
        for i, layer in enumerate(rt.model.model.layers):
            layer.self_attn.register_forward_pre_hook(
                lambda m, a, i=i: events.append(("attn", i)) if rt.engine.phase == "decode" else None)
        decide = rt.policy.prefetch

        def spy(view, ctx):
            if view.phase == "decode":
                events.append(("prefetch", view.layer))
            return decide(view, ctx)

        rt.policy.prefetch = spy
        res = rt.generate(PROMPTS[:batch], 8)
        plans = [{k: r[k] for k in ("step", "layer", "loads", "cpu", "evict", "prefetch")} | {
            "actions": r["actions"].tolist()} for r in rt.engine.trace]
    finally:
        rt.close()
    return res.tokens, _counters(res.metrics), plans, events


def _counters(metrics: dict) -> dict:
    """The metrics without timings (nested per phase)."""
    return {k: _counters(v) if isinstance(v, dict) else v for k, v in metrics.items()
            if not (k.endswith("_s") or "_s_" in k or k in ("step_s", "ttft_list"))}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3"])
@pytest.mark.parametrize("policy", ["smoe", "hybrimoe"])
def test_a_deferred_prefetch_decides_as_in_the_layer(policy, family, batch, tiny):
    model = tiny(family)
    tokens, counters, plans, events = _run(model, policy, batch)
    tokens_u, counters_u, plans_u, events_u = _run(model, f"test-{policy}-undeclared", batch)
    assert counters["prefetches"] > 0, "the run must prefetch for the comparison to mean anything"
    assert tokens == tokens_u
    assert counters == counters_u
    assert plans == plans_u
    # and it was deferred: each decode prefetch with a next layer is decided after that layer's attention (in the
    # layer: before it)
    assert _after_next_attention(events) and all(_after_next_attention(events))
    assert not any(_after_next_attention(events_u))


def _after_next_attention(events: list[tuple[str, int]]) -> list[bool]:
    """For each prefetch decision of a layer followed by another: was it taken after the next layer's attention?"""
    out = []
    for i, (kind, layer) in enumerate(events):
        if kind == "prefetch" and ("attn", layer + 1) in events:
            start = max(j for j in range(i) if events[j] == ("attn", layer))  # this layer's attention, this step
            out.append(events.index(("attn", layer + 1), start) < i)
    return out


@register_policy("test-smoe-misdeclared", replace="substitute", prefetch_mode="attention")
class MisdeclaredSMoE(SMoE):
    """Declares the next layer's prediction without attention but reads it with."""

    def predictions(self, view):
        return [(nxt, False) for nxt, _ in super().predictions(view)]


@register_policy("test-smoe-bad-target", replace="substitute", prefetch_mode="attention")
class BadTargetSMoE(SMoE):
    """Declares a prediction of its own layer."""

    def predictions(self, view):
        return [(view.layer, False)] if view.phase == "decode" else []


@pytest.mark.parametrize("policy, match", [("test-smoe-misdeclared", "did not declare"),
                                           ("test-smoe-bad-target", "a target is a later MoE layer")])
def test_a_prediction_read_or_declared_wrongly_is_refused(policy, match, tiny):
    rt = Runtime(tiny("qwen2_moe"), policy, device="cpu", cache_experts=9, batch=1)
    try:
        with pytest.raises(PolicyError, match=match):
            rt.generate(PROMPTS[:1], 4)
    finally:
        rt.close()
