"""The two pieces of the runtime that restate what transformers does: the family adapters (router scores and
gate weights) and the memory plan (KV-cache bytes per token, skeleton bytes, slots a budget buys). Each is
checked against transformers' own model."""
from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from smoe.budget import ACTIVATION_RESERVE_BYTES, GiB, kv_bytes_per_token
from smoe.families import FAMILIES as ADAPTERS
from smoe.loader import moe_blocks
from smoe.runtime import Runtime
from smoe_test_support import FAMILIES, PROMPTS

SOFTMAX_TOPK = {"qwen2_moe", "qwen3_moe", "olmoe", "mixtral"}  # plain top-k of the scores (no groups, no bias)


@pytest.mark.parametrize("family", FAMILIES)
def test_scores_and_weights_match_the_hf_router(family, hf_model, reference):
    """On an unchanged expert set, Family.weights(Family.scores(logits)) is the HF router's own weights; for
    plain top-k families the router's choice is the top-k of the scores the policies see."""
    model = hf_model(family)
    adapter = ADAPTERS[family]
    ref = reference(family)  # decoded before the hooks are attached
    captured = []
    handles = [b.gate.register_forward_hook(lambda m, i, o: captured.append(o)) for b in moe_blocks(model).values()]
    try:
        with torch.no_grad():
            model(input_ids=ref.ids, attention_mask=ref.mask)
    finally:
        for h in handles:
            h.remove()
    assert len(captured) == len(moe_blocks(model))
    for logits, weights, idx in captured:
        scores = adapter.scores(logits)
        assert scores.dtype == torch.float32 and scores.shape == logits.shape
        if adapter.scoring == "softmax":
            torch.testing.assert_close(scores.sum(-1), torch.ones(len(scores)))
        else:
            assert ((scores > 0) & (scores < 1)).all()
        mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True)
        w = adapter.weights(scores, mask, model.config)
        torch.testing.assert_close(w.gather(1, idx), weights.float(), atol=1e-6, rtol=1e-5)
        assert (w[~mask] == 0).all()
        if family in SOFTMAX_TOPK:
            top = scores.topk(idx.shape[1], dim=-1).indices
            assert torch.equal(top.sort(-1).values, idx.sort(-1).values)


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_bytes_per_token_match_the_hf_cache(family, hf_model):
    model = hf_model(family)
    cache = DynamicCache(config=model.config)
    S = 9
    with torch.no_grad():
        model(input_ids=torch.arange(S)[None] + 65, use_cache=True, past_key_values=cache)
    stored = sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
                 for layer in cache.layers)
    assert stored == S * kv_bytes_per_token(model.config, 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_memory_plan(family, tiny, hf_model):
    model = hf_model(family)
    rt = Runtime(tiny(family), "lru", device="cpu", cache_experts=5, batch=2, kv_tokens=100)
    try:
        ids, _ = rt.encode(PROMPTS)
        res = rt.generate(PROMPTS, 3)
    finally:
        rt.close()
    mem, info = rt.memory, rt.info
    # routed experts: E x 3 x I x H floats per MoE layer; the skeleton is everything else of the HF model
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    routed = len(info.moe_layers) * info.num_experts * info.expert_bytes
    assert len(info.moe_layers) == len(moe_blocks(model))
    assert mem.skeleton_bytes == total - routed
    assert mem.capacity == 5 and mem.pool_bytes == 5 * info.expert_bytes
    assert mem.kv_reserve_bytes == 100 * kv_bytes_per_token(model.config, 4)
    # on the CPU the peak is the logical device footprint: skeleton, slots, and this run's KV cache
    kv = kv_bytes_per_token(model.config, 4) * 2 * (ids.shape[1] + 3)
    assert res.metrics["peak_device_bytes"] == mem.skeleton_bytes + mem.pool_bytes + kv


def test_budget_buys_the_slots_it_can_hold(tiny):
    family = "qwen2_moe"
    probe = Runtime(tiny(family), "lru", device="cpu", cache_experts=4, batch=2, kv_tokens=64)
    probe.close()
    mem = probe.memory
    fixed = mem.skeleton_bytes + mem.kv_reserve_bytes + ACTIVATION_RESERVE_BYTES
    for slots in (4, 7, 13):
        budget = (fixed + slots * mem.expert_bytes + mem.expert_bytes // 2) / GiB
        rt = Runtime(tiny(family), "lru", device="cpu", budget_gb=budget, batch=2, kv_tokens=64)
        rt.close()
        assert rt.memory.capacity == slots
        assert rt.memory.device_bytes <= rt.memory.budget_bytes
        if slots < 2 * mem.min_slots:
            continue
        # gathered grouped decode (the GPU default without Triton) holds one layer's experts (top-k x batch) beside
        # the slots
        rt = Runtime(tiny(family), "lru", device="cpu", budget_gb=budget, batch=2, kv_tokens=64,
                     grouped_experts="gather")
        rt.close()
        assert rt.memory.capacity == slots - rt.memory.min_slots and rt.memory.device_bytes <= rt.memory.budget_bytes
    # more than every expert: capped at all of them
    rt = Runtime(tiny(family), "lru", device="cpu", budget_gb=(fixed + 1000 * mem.expert_bytes) / GiB, batch=2,
                 kv_tokens=64)
    rt.close()
    assert rt.memory.capacity == len(rt.info.moe_layers) * rt.info.num_experts


def test_default_kv_cache(tiny):
    """The KV cache: static on a GPU (a decode layer's whole attention one graph), grown each step on a CPU, which
    is what a runtime there gets when it names none."""
    from smoe.runtime import default_kv_cache

    assert default_kv_cache(torch.device("cuda")) == "static"
    assert default_kv_cache(torch.device("cpu")) == "dynamic"
    rt = Runtime(tiny("qwen2_moe"), "lru", device="cpu", cache_experts=6)
    try:
        assert rt.kv_cache == "dynamic" and rt.environment()["kv_cache"] == "dynamic"
    finally:
        rt.close()


def test_default_grouped_mode(monkeypatch):
    """Decode's resident experts: one by one on a CPU; on a GPU read in place by the slot kernel, replayed as CUDA
    graphs, where Triton is installed, else gathered first (which the budget then reserves room for)."""
    from smoe import grouped_kernel
    from smoe.runtime import default_grouped

    assert default_grouped(torch.device("cpu")) == "off"
    monkeypatch.setattr(grouped_kernel, "triton", None)
    assert default_grouped(torch.device("cuda")) == "gather"
    monkeypatch.setattr(grouped_kernel, "triton", object())
    assert default_grouped(torch.device("cuda")) == "graphs"
