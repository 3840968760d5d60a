"""Exactness: every baseline that keeps the router's choice reproduces transformers' own model token for token
(and logit for logit) on every supported family, with a cache that holds every expert and with one that holds
only the minimum (top-k x batch slots, so experts are loaded, evicted or run on the CPU all the time)."""
from __future__ import annotations

import pytest
import torch

from smoe.errors import BudgetError
from smoe.generate import greedy_decode
from smoe.loader import moe_blocks
from smoe.runtime import Runtime
from smoe_test_support import FAMILIES, NEW_TOKENS, PAD_ID, PROMPTS, collect_logits

BASELINES = ["all-gpu", "lru", "on-demand", "cpu-assist"]
BATCH = len(PROMPTS)
FULL = 1000  # more slots than any tiny model has experts: capped to all of them
FEW = 4  # top_k (2) x batch (2): the smallest cache the runtime accepts
ATOL = 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_decode_equals_hf_generate(family, hf_model, reference):
    """The reference loop itself: greedy_decode on the HF model = HF's generate on a left-padded batch."""
    ref = reference(family)
    assert ref.mask[1].eq(0).any() and ref.mask[0].eq(1).all(), "the batch must actually be left-padded"
    model = hf_model(family)
    with torch.no_grad():
        out = model.generate(ref.ids, attention_mask=ref.mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=PAD_ID)
    assert out.shape == (BATCH, ref.ids.shape[1] + NEW_TOKENS)
    assert out[:, ref.ids.shape[1]:].tolist() == ref.tokens
    # and greedy_decode's tokens are the argmax of the logits it reports
    assert [lg.argmax(-1).tolist() for lg in ref.logits] == [list(col) for col in zip(*ref.tokens)]


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_does_not_change_a_sequence(family, hf_model, reference):
    """The short prompt decoded alone gives the same tokens as inside the padded batch (positions from the mask)."""
    ref = reference(family)
    n = int(ref.mask[1].sum())
    ids, mask = ref.ids[1:, -n:], ref.mask[1:, -n:]
    tokens = greedy_decode(hf_model(family), ids, mask, NEW_TOKENS).tokens
    assert tokens.tolist()[0] == ref.tokens[1]


@pytest.mark.parametrize("cache", ["full", "few"])
@pytest.mark.parametrize("policy", BASELINES)
@pytest.mark.parametrize("family", FAMILIES)
def test_baseline_matches_hf(family, policy, cache, tiny, reference):
    slots = FULL if cache == "full" else FEW
    if policy == "all-gpu" and cache == "few":
        with pytest.raises(BudgetError, match="all-gpu needs all"):
            Runtime(tiny(family), policy, device="cpu", cache_experts=slots, batch=BATCH)
        return
    ref = reference(family)
    rt = Runtime(tiny(family), policy, device="cpu", cache_experts=slots, batch=BATCH)
    try:
        ids, mask = rt.encode(PROMPTS)
        assert torch.equal(ids, ref.ids) and torch.equal(mask, ref.mask)
        logits, steps, cb = collect_logits()
        res = rt.generate(PROMPTS, NEW_TOKENS, on_logits=cb)
        info = rt.info
    finally:
        rt.close()
    m = res.metrics
    total_experts = len(info.moe_layers) * info.num_experts
    assert rt.memory.capacity == (total_experts if cache == "full" else FEW)

    assert res.tokens == ref.tokens
    assert steps == list(range(NEW_TOKENS))
    assert len(logits) == len(ref.logits) == NEW_TOKENS
    for step, (got, want) in enumerate(zip(logits, ref.logits)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0, msg=lambda s: f"step {step}: {s}")

    # every (token, routed expert) was computed: nothing substituted or skipped
    assert m["substitutions"] == 0 and m["skips"] == 0
    decode_tokens = BATCH * (NEW_TOKENS - 1)
    assert m["decode"]["uses"] == decode_tokens * len(info.moe_layers) * info.top_k
    assert m["decode_steps"] == NEW_TOKENS - 1
    if policy == "all-gpu":
        assert m["hit_rate"] == 1.0
        assert m["loads"] == 0 and m["bytes_h2d"] == 0 and m["cpu_experts"] == 0
        assert m["preload_loads"] == total_experts
    elif policy == "on-demand":
        assert m["hit_rate"] == 0.0
        assert m["decode"]["loads"] > 0 and m["cpu_experts"] == 0
    elif policy == "lru":
        assert m["cpu_experts"] == 0
        if cache == "few":
            assert m["loads"] > 0 and m["decode"]["loads"] > 0
        else:  # every expert is loaded at most once, and nothing is ever evicted
            assert 0 < m["loads"] <= total_experts
    elif policy == "cpu-assist":
        assert m["loads"] <= rt.memory.capacity  # the resident set is filled once and then static
        if cache == "few":
            assert m["cpu_experts"] > 0
        else:
            assert m["cpu_experts"] == 0
    assert m["bytes_h2d"] == m["loads"] * info.expert_bytes


@pytest.mark.parametrize("family", FAMILIES)
def test_cpu_experts_reach_the_device_as_one_weighted_sum(family, tiny, reference):
    """A layer's CPU experts are summed, gate-weighted, on the worker: the device gets that one [T,H] sum (one copy,
    one add), none of them goes through the per-expert scatter, and the tokens and logits stay HF's."""
    from smoe.engine import Engine
    from smoe.store import expert_forward

    ref = reference(family)
    rt = Runtime(tiny(family), "cpu-assist", device="cpu", cache_experts=FEW, batch=BATCH)
    engine = rt.engine
    calls = [0]  # run_layer calls so far: which layer of which forward a record belongs to
    scattered: set[tuple[int, int]] = set()  # (call, expert) through the per-expert scatter
    sums: list[tuple] = []
    run_layer, compute, combine = engine.run_layer, engine._cpu_compute, Engine._combine

    def counted_layer(*a):
        calls[0] += 1
        return run_layer(*a)

    def recorded_compute(layer, x_host, jobs, w):
        out = compute(layer, x_host, jobs, w)
        sums.append((calls[0], layer, x_host.clone(), jobs, w.copy(), out[0]))
        return out

    def recorded_combine(final, experts, outs, tok, w):
        scattered.update((calls[0], e) for e in experts)
        return combine(final, experts, outs, tok, w)

    engine.run_layer, engine._cpu_compute, engine._combine = counted_layer, recorded_compute, recorded_combine
    try:
        logits, _, cb = collect_logits()
        res = rt.generate(PROMPTS, NEW_TOKENS, on_logits=cb)
        assert res.metrics["cpu_experts"] == sum(len(r[3]) for r in sums) > 0
        on_cpu = {(call, e) for call, _, _, jobs, _, _ in sums for e, _ in jobs}
        assert not on_cpu & scattered, "a CPU expert went through the per-expert scatter"
        assert scattered, "no device expert was combined: the check above saw nothing"
        for _, layer, x, jobs, w, got in sums:  # the sum is each job's output on its rows times its gate weight
            want = torch.zeros_like(x)
            for e, rows in jobs:
                y = expert_forward(x[rows], rt.pool.store.expert(layer, e), engine.shape, engine.act)
                want[rows] += y * torch.from_numpy(w[rows, e])[:, None].to(y.dtype)
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    finally:
        rt.close()
    assert res.tokens == ref.tokens
    for step, (got, want) in enumerate(zip(logits, ref.logits)):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0, msg=lambda s: f"step {step}: {s}")


def test_weighted_expert_sum_adds_each_job_on_its_rows():
    """The worker's sum over a layer's CPU experts equals each expert's output on its rows times its gate weight,
    added row by row, where several experts share a row and where an expert has rows out of order."""
    import numpy as np

    from smoe.checkpoint import ExpertShape
    from smoe.store import expert_forward, weighted_expert_sum

    torch.manual_seed(0)
    shape, act = ExpertShape(hidden=16, intermediate=8), torch.nn.functional.silu
    experts = torch.randn(6, shape.numel) * 0.3  # [E, 3*I*H] float32, so the comparison is tight
    x = torch.randn(4, shape.hidden)  # [T,H]
    w = np.random.default_rng(0).random((4, 6), dtype=np.float32)  # [T,E]
    jobs = [(0, [0, 2]), (2, [0, 1, 2, 3]), (3, [3, 1]), (5, [3])]  # rows 0-3 each in two or three jobs
    want = torch.zeros_like(x)
    for e, rows in jobs:
        for r in rows:
            want[r] += expert_forward(x[[r]], experts[e], shape, act)[0] * float(w[r, e])
    got = weighted_expert_sum(x, jobs, experts.__getitem__, w, shape, act)
    assert got.dtype == x.dtype and got.shape == x.shape
    torch.testing.assert_close(got, want)
    half = weighted_expert_sum(x.bfloat16(), jobs, lambda e: experts[e].bfloat16(), w, shape, act)
    assert half.dtype == torch.bfloat16  # summed in float32, returned in x's dtype
    torch.testing.assert_close(half.float(), want, atol=0.05, rtol=0.05)


def test_token_id_prompts_equal_text_prompts(tiny, reference):
    """Prompts given as token ids are left-padded with the tokenizer's pad id and decode like the text."""
    family = "qwen2_moe"
    ref = reference(family)
    seqs = [ids[m.bool()].tolist() for ids, m in zip(ref.ids, ref.mask)]
    assert len(seqs[0]) != len(seqs[1])
    rt = Runtime(tiny(family), "lru", device="cpu", cache_experts=FEW, batch=BATCH)
    try:
        assert rt.pad_id == PAD_ID
        res = rt.generate(seqs, NEW_TOKENS)
    finally:
        rt.close()
    assert res.tokens == ref.tokens


@pytest.mark.parametrize("policy", ["lru", "all-gpu"])
def test_runtime_is_reusable_with_per_call_metrics(policy, tiny, reference):
    """A second generate on the same runtime is still exact; its metrics count that call only (the cache
    persists, so an lru run may hit more, never count the first call's uses again)."""
    family = "olmoe"
    ref = reference(family)
    rt = Runtime(tiny(family), policy, device="cpu", cache_experts=FULL, batch=BATCH)
    try:
        first = rt.generate(PROMPTS, NEW_TOKENS)
        second = rt.generate(PROMPTS, NEW_TOKENS)
        short = rt.generate(PROMPTS[:1], 3)
    finally:
        rt.close()
    assert first.tokens == second.tokens == ref.tokens
    assert short.tokens == [ref.tokens[0][:3]]
    for key in ("uses", "skips", "substitutions"):
        assert second.metrics["decode"][key] == first.metrics["decode"][key]
    assert second.metrics["decode_steps"] == first.metrics["decode_steps"] == NEW_TOKENS - 1
    assert short.metrics["decode_steps"] == 2
    assert second.metrics["hit_rate"] >= first.metrics["hit_rate"]
    if policy == "lru":  # every expert stayed resident after the first call: nothing left to load
        assert first.metrics["loads"] > 0 and second.metrics["loads"] == 0 and second.metrics["hit_rate"] == 1.0
    assert second.metrics["preload_loads"] == first.metrics["preload_loads"]


@pytest.mark.parametrize(("policy", "slots"), [("all-gpu", FULL), ("lru", 12)])
@pytest.mark.parametrize("family", FAMILIES)
def test_grouped_decode_matches_hf(family, policy, slots, tiny, reference):
    """Decode's resident experts as one batched product (the GPU default) give HF's tokens and logits too; so do
    its loaded experts, batched with them once their copies land in the layers where no load waits for a slot."""
    ref = reference(family)
    rt = Runtime(tiny(family), policy, device="cpu", cache_experts=slots, batch=BATCH, grouped_experts="gather")
    grouped_layers, loaded_in_group = [], []
    loaded: set = set()  # keys copied in during the layer running
    plain, load, run_layer = rt.engine._grouped, rt.pool.load, rt.engine.run_layer

    def grouped(layer, x, experts, w):
        grouped_layers.append(layer)
        loaded_in_group.extend(e for e in experts if (layer, e) in loaded)
        return plain(layer, x, experts, w)

    def counted(key, prefetch=False):
        loaded.add(key)
        return load(key, prefetch)

    def layer_run(*a):
        loaded.clear()
        return run_layer(*a)

    rt.engine._grouped, rt.pool.load, rt.engine.run_layer = grouped, counted, layer_run
    try:
        logits, _, cb = collect_logits()
        res = rt.generate(PROMPTS, NEW_TOKENS, on_logits=cb)
    finally:
        rt.close()
    assert grouped_layers, "no decode layer took the grouped path"
    if policy == "lru":
        assert loaded_in_group, "no loaded expert was computed in a batched product"
    assert res.tokens == ref.tokens
    for step, (got, want) in enumerate(zip(logits, ref.logits)):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0, msg=lambda s: f"step {step}: {s}")


@pytest.mark.parametrize("family", FAMILIES)
def test_graphs_mode_feeds_every_resident_group_to_the_captured_product(family, tiny, reference):
    """The GPU default `grouped_experts="graphs"`, its engine side on the CPU: each group of resident experts, a lone
    one too, goes to the captured product (`GroupedGraphs`) with its slots in order and its gate weights as [n,T] rows.
    The product is stood in for by the same sum computed from the host store (the captured function itself runs in
    Triton's interpreter in test_grouped_kernel.py); the tokens and logits must be HF's."""
    import numpy as np

    from smoe.store import grouped_forward

    ref = reference(family)
    rt = Runtime(tiny(family), "lru", device="cpu", cache_experts=12, batch=BATCH, grouped_experts="gather")
    sizes: list[int] = []

    def product(x, slots, gate, gate_dtype):  # x [T,H], gate [n,T] float32 -> [T,H]
        assert isinstance(gate, np.ndarray) and gate.dtype == np.float32 and gate.shape == (len(slots), len(x))
        key_of = {slot: key for key, slot in rt.pool.slot_of.items()}
        weights = torch.stack([rt.pool.store.expert(*key_of[s]) for s in slots])  # [n, 3*I*H]
        y = grouped_forward(x, weights, rt.engine.shape, rt.engine.act)  # [n,T,H]
        sizes.append(len(slots))
        return (y * torch.from_numpy(gate).to(gate_dtype)[..., None].to(y.dtype)).sum(0)

    rt.engine.grouped, rt.engine.products = "graphs", product
    rt.pool.await_slots = lambda keys: [rt.pool.slot_of[k] for k in keys]
    try:
        logits, _, cb = collect_logits()
        res = rt.generate(PROMPTS, NEW_TOKENS, on_logits=cb)
    finally:
        rt.close()
    assert 1 in sizes and any(n > 1 for n in sizes), sizes
    assert res.tokens == ref.tokens
    for step, (got, want) in enumerate(zip(logits, ref.logits)):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0, msg=lambda s: f"step {step}: {s}")


def test_router_first_block_order(tiny, reference):
    """Qwen2-MoE blocks run their router before their shared expert (`smoe.router_first`): when the shared expert
    runs, the layer's scores are already on their way to the host; with `router_first=False` the block keeps HF's
    order (shared expert, then router). The two orders give the same logits bit for bit, and HF's tokens."""
    family = "qwen2_moe"
    ref = reference(family)
    runs = {}
    for router_first in (True, False):
        rt = Runtime(tiny(family), "lru", device="cpu", cache_experts=FEW, batch=BATCH, router_first=router_first)
        staged_when_shared_ran = []
        for block in moe_blocks(rt.model).values():
            block.shared_expert.register_forward_hook(
                lambda mod, args, out, experts=block.experts: staged_when_shared_ran.append(experts.staged is not None))
        try:
            assert len(rt.router_first) == (len(rt.experts) if router_first else 0)
            logits, _, cb = collect_logits()
            res = rt.generate(PROMPTS, NEW_TOKENS, on_logits=cb)
        finally:
            rt.close()
        assert staged_when_shared_ran and set(staged_when_shared_ran) == {router_first}
        assert res.tokens == ref.tokens
        runs[router_first] = logits
    for step, (first, hf_order) in enumerate(zip(runs[True], runs[False])):
        assert torch.equal(first, hf_order), f"step {step}: the two block orders' logits differ"
