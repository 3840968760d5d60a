"""The next-layer predictor that prefetching policies use: when every routed expert of layer i has been
computed before the prediction (all resident), layer i's approximate output is its true output, so the
prediction of layer i+1's router scores (its attention over the read-only KV cache, then its router) must
equal the scores the runtime then sees at layer i+1 - in the prefill and in every decode step, on every family."""
from __future__ import annotations

import pytest
import torch

from smoe.plan import Action, Plan
from smoe.policy import ExpertPolicy, register_policy
from smoe.runtime import Runtime
from smoe_test_support import FAMILIES, PROMPTS


@register_policy("test-predict-probe")
class PredictProbe(ExpertPolicy):
    """Every expert resident; records the predicted and the actual scores of every MoE layer."""

    def setup(self, model, capacity):
        self.predicted: dict = {}  # (step, layer) -> (with attention, without, gate_scores)
        self.actual: dict = {}  # (step, layer) -> scores
        return [(layer, e) for layer in model.moe_layers for e in range(model.num_experts)]

    def plan(self, view):
        self.actual[(view.step, view.layer)] = view.scores.clone()
        return Plan.per_expert(view, {e: Action.HIT for e in view.needed()})

    def prefetch(self, view, ctx):
        if ctx.next_layer is not None:
            self.predicted[(view.step, ctx.next_layer)] = (
                ctx.predict(attention=True), ctx.predict(attention=False), ctx.gate_scores(ctx.next_layer),
            )
        return None


@pytest.mark.parametrize("family", FAMILIES)
def test_prediction_is_exact_when_the_layer_is_fully_computed(family, tiny):
    rt = Runtime(tiny(family), "test-predict-probe", device="cpu", cache_experts=1000, batch=len(PROMPTS))
    try:
        rt.generate(PROMPTS, 6)
        pol, layers = rt.policy, rt.info.moe_layers
    finally:
        rt.close()
    expected = {(s, l) for s in range(6) for l in layers[1:]}  # every MoE layer that follows another directly
    assert set(pol.predicted) == expected
    worst_no_attention = 0.0
    for key, (with_attn, without, gate) in pol.predicted.items():
        actual = pol.actual[key]
        assert with_attn.shape == actual.shape
        torch.testing.assert_close(with_attn, actual, atol=2e-5, rtol=1e-4, msg=lambda m: f"{key}: {m}")
        torch.testing.assert_close(gate, without, atol=1e-6, rtol=0)  # the same router on the same state
        worst_no_attention = max(worst_no_attention, float((without - actual).abs().max()))
    assert worst_no_attention > 1e-3, "skipping the attention should be an approximation"


def test_prediction_reuses_the_shared_expert_the_block_computed(tiny):
    """A Qwen2-MoE block computes its shared expert before its routed experts; the prediction takes that output
    instead of running the shared expert again (and stays exact: the test above)."""
    rt = Runtime(tiny("qwen2_moe"), "test-predict-probe", device="cpu", cache_experts=1000, batch=len(PROMPTS))
    calls = []
    try:
        blocks = rt.engine.predictor.blocks
        for block in blocks.values():
            block.shared_expert.register_forward_pre_hook(lambda m, a: calls.append(1))
        rt.generate(PROMPTS, 3)
        forwards = 3 * len(blocks)  # every MoE block, every forward pass (prefill + 2 decode steps)
    finally:
        rt.close()
    assert len(calls) == forwards
