"""The SMoE policy: score-aware eviction with the shield, ablation steps' exactness, alpha monotonicity,
and decisions that do not depend on timing."""
import numpy as np
import pytest
import torch

from smoe.plan import Action, CacheView, LayerView, ModelInfo, check_plan
from smoe.policy import make_policy
from smoe.runtime import Runtime
from smoe.tiny import make_tiny
from smoe_test_support import FakePool

INFO = ModelInfo(moe_layers=(0, 1), num_experts=4, top_k=1, expert_bytes=1000, model_type="test")


def view(pool, layer, scores, topk):
    return LayerView(layer=layer, phase="decode", step=1, scores_np=np.array(scores, dtype=np.float32),
                     topk_np=np.array(topk, dtype=np.int64), cache=CacheView(pool), model=INFO)


def step(policy, pool, layer, scores, topk):
    v = view(pool, layer, scores, topk)
    plan = policy.plan(v)
    ex = check_plan(plan, v, policy.name)
    pool.apply(plan, layer, ex)
    policy.observe(v, plan)
    return plan


def test_evicts_lowest_windowed_mean_score_not_lru():
    pol = make_policy("smoe-ce", window=2)
    pool = FakePool(capacity=2)
    step(pol, pool, 0, [[0.7, 0.1, 0.1, 0.1]], [[0]])  # loads (0,0): mean score 0.7, least recently used
    step(pol, pool, 1, [[0.2, 0.3, 0.25, 0.25]], [[1]])  # loads (1,1): mean score 0.3, most recently used
    step(pol, pool, 0, [[0.05, 0.05, 0.8, 0.1]], [[2]])  # needs a slot
    assert (1, 1) not in pool.slot_of and (0, 0) in pool.slot_of  # LRU would have evicted (0,0)


def test_window_forgets_old_passes():
    pol = make_policy("smoe-ce", window=1)
    pool = FakePool(capacity=2)
    step(pol, pool, 0, [[0.7, 0.1, 0.1, 0.1]], [[0]])
    step(pol, pool, 1, [[0.2, 0.3, 0.25, 0.25]], [[1]])
    step(pol, pool, 0, [[0.0, 0.1, 0.5, 0.4]], [[3]])  # evicts (1,1); layer 0's window is now this pass
    step(pol, pool, 1, [[0.2, 0.3, 0.25, 0.25]], [[1]])  # candidates (0,0) mean 0.0, (0,3) mean 0.4
    assert (0, 0) not in pool.slot_of and (0, 3) in pool.slot_of


def test_window_none_is_lru():
    pol = make_policy("smoe-ce", window=None)
    pool = FakePool(capacity=2)
    step(pol, pool, 0, [[0.7, 0.1, 0.1, 0.1]], [[0]])
    step(pol, pool, 1, [[0.1, 0.9, 0.0, 0.0]], [[1]])
    step(pol, pool, 0, [[0.05, 0.05, 0.8, 0.1]], [[2]])
    assert (0, 0) not in pool.slot_of and (1, 1) in pool.slot_of  # (0,0) was least recently used


def test_scores_of_unselected_experts_count():
    pol = make_policy("smoe-ce", window=4)
    pool = FakePool(capacity=2)
    step(pol, pool, 0, [[0.5, 0.4, 0.05, 0.05]], [[0]])  # (0,0) resident
    step(pol, pool, 0, [[0.3, 0.6, 0.05, 0.05]], [[1]])  # (0,1) resident
    # expert 0 is never selected again but keeps a high score; expert 1 drops
    step(pol, pool, 1, [[0.0, 0.0, 0.0, 1.0]], [[3]])  # layer 1 fills? capacity 2 -> evicts a layer-0 expert
    # layer-0 means: e0 (0.5+0.3)/2=0.4, e1 (0.4+0.6)/2=0.5 -> e0 evicted
    assert (0, 1) in pool.slot_of and (0, 0) not in pool.slot_of


def test_windowed_means_are_the_mean_of_the_last_window_passes():
    """The ring of per-pass means, brought up to date only when a victim is ranked, equals Eq. 3 computed
    directly (the mean over each layer's last `window` passes of its tokens' mean scores), at every batch."""
    rng = np.random.default_rng(0)
    for window in (1, 3, 8):
        pol = make_policy("smoe-ce", window=window)
        pool = FakePool(capacity=8)  # every expert fits: observe and rank only
        passes = {0: [], 1: []}
        for _ in range(20):
            layer = int(rng.integers(2))
            scores = rng.random((int(rng.integers(1, 4)), 4)).astype(np.float32)  # [T,E]
            topk = scores.argmax(axis=1)[:, None].tolist()
            step(pol, pool, layer, scores.tolist(), topk)
            passes[layer].append(scores.astype(np.float64).mean(axis=0))
            if rng.random() < 0.5:
                means = pol.eviction_rank(view(pool, layer, scores.tolist(), topk))[1]  # [L,E]
                for i, seen in passes.items():
                    want = np.mean(seen[-window:], axis=0) if seen else np.zeros(4)
                    np.testing.assert_allclose(means[i], want, rtol=1e-6)


def test_observe_writes_the_passes_mean_as_numpy_computes_it():
    """`observe` (compiled, `observe_ring`) puts each pass's mean scores into the next ring slot bit for bit as
    `LayerView.mean_scores` (numpy) gives them, from a decode row to a long prefill, over stale slots as the ring
    wraps, and counts the pass."""
    rng = np.random.default_rng(1)
    pol = make_policy("smoe-ce", window=3)
    pool = FakePool(capacity=8)
    for i, T in enumerate([1, 2, 3, 1, 7, 64, 129, 300, 3, 2]):
        layer = i % 2
        scores = rng.random((T, 4), dtype=np.float32)  # [T,E]
        v = view(pool, layer, scores.tolist(), scores.argmax(axis=1)[:, None].tolist())
        before = int(pol.passes[layer]) if len(pol.passes) else 0
        pol.observe(v, pol.plan(v))
        assert pol.passes[layer] == before + 1
        np.testing.assert_array_equal(pol.ring[layer, before % 3], v.mean_scores())
        assert T == 1 or not np.array_equal(v.mean_scores(), scores[0])  # a mean, not a row


def test_shield_protects_experts_of_the_layer_being_computed():
    pol = make_policy("smoe-ce", window=2)
    pool = FakePool(capacity=2)
    step(pol, pool, 0, [[0.01, 0.01, 0.01, 0.97]], [[3]])  # (0,3)
    step(pol, pool, 1, [[0.97, 0.01, 0.01, 0.01]], [[0]])  # (1,0)
    # layer 0 now needs 3 (resident, lowest mean would be... its own score 0.97) and the decode of a new
    # expert 2 whose victim must not be (0,3) even if it had the lowest score
    pol_scores = [[0.0, 0.0, 0.5, 0.5]]
    v = view(pool, 0, pol_scores, [[3]])
    plan = pol.plan(v)
    assert plan.evict == []  # nothing to evict: (0,3) is a hit
    # two tokens: one uses resident 3, the other needs 2 -> victim is (1,0), never the shielded (0,3)
    v = LayerView(layer=0, phase="decode", step=2, scores_np=np.array([[0.0, 0.0, 0.1, 0.9], [0.0, 0.0, 0.9, 0.1]],
                                                                      dtype=np.float32),
                  topk_np=np.array([[3], [2]]), cache=CacheView(pool), model=INFO)
    plan = pol.plan(v)
    assert plan.evict == [(1, 0)]


def test_prefetched_experts_are_evicted_after_normal_ones():
    pol = make_policy("smoe-ce", window=2)
    pool = FakePool(capacity=2)
    pool.add((1, 0), prefetched=True)  # never scored: mean 0
    step(pol, pool, 0, [[0.9, 0.05, 0.05, 0.0]], [[0]])  # (0,0) normal, high score
    pol._insert((1, 0))  # the policy's own prefetch would have recorded it
    step(pol, pool, 0, [[0.0, 0.05, 0.9, 0.05]], [[2]])
    assert (1, 0) in pool.slot_of and (0, 0) not in pool.slot_of


# ---- through the runtime --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny("qwen2_moe", tmp_path_factory.mktemp("m") / "qwen2_moe")


PROMPTS = ["The experts of a mixture", "Hi"]


def run(ckpt, policy, slots=6, device="cpu", **params):
    rt = Runtime(ckpt, policy, device=device, cache_experts=slots, batch=2, policy_params=params, trace=True)
    try:
        res = rt.generate(PROMPTS, max_new_tokens=16)
        return res, rt.engine.trace
    finally:
        rt.close()


@pytest.mark.parametrize("policy", ["smoe-ce", "smoe-ce-cr"])
def test_alpha_zero_generates_the_hf_tokens(ckpt, policy):
    ref, _ = run(ckpt, "all-gpu", slots=1000)
    res, _ = run(ckpt, policy, alpha=0.0)
    assert res.tokens == ref.tokens
    assert res.metrics["substitutions"] == 0


def test_substitutions_rise_with_alpha_and_hit_rate_does_not_fall_on_a_trace(ckpt):
    # Replay one recorded decode trace: each layer's scores and top-k against the resident set the run had.
    _, trace = run(ckpt, "lru")
    residents = {}
    cache: set = set()
    for rec in trace:  # the lru run's resident sets, rebuilt from its loads and evictions
        residents[(rec["step"], rec["layer"])] = {e for (l, e) in cache if l == rec["layer"]}
        for key in rec["evict"]:
            cache.discard(tuple(key))
        cache |= {(rec["layer"], e) for e in rec["loads"]}
    from smoe.router import expert_cache_router

    prev_subs, prev_hits = -1, -1.0
    for alpha in [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]:
        subs = hits = uses = 0
        for rec in trace:
            if rec["phase"] != "decode":
                continue
            scores, topk = rec["scores"].float(), rec["topk"].long()
            res = residents[(rec["step"], rec["layer"])]
            out = expert_cache_router(scores, 2, alpha, res, topk=topk)
            for t, comp in enumerate(out):
                subs += len(set(comp) - set(topk[t].tolist()))
                hits += len(set(comp) & res)
                uses += len(comp)
        assert subs >= prev_subs
        assert hits / uses >= prev_hits - 1e-12
        prev_subs, prev_hits = subs, hits / uses
    assert prev_subs > 0


@pytest.mark.parametrize("policy", ["smoe-ce-cr", "smoe-ce-cr-ba", "skip", "score-lower"])
def test_decisions_do_not_depend_on_timing(ckpt, policy):
    a, _ = run(ckpt, policy, alpha=0.4)
    b, _ = run(ckpt, policy, alpha=0.4)
    assert a.tokens == b.tokens
    for key in ("hit_rate", "substitutions", "skips", "loads", "cpu_experts"):
        assert a.metrics[key] == b.metrics[key], key


def test_skip_drops_what_substitution_replaces(ckpt):
    sub, _ = run(ckpt, "smoe-ce-cr", alpha=0.5)
    skip, _ = run(ckpt, "skip", alpha=0.5)
    assert sub.metrics["substitutions"] > 0 and skip.metrics["skips"] > 0
    assert skip.metrics["substitutions"] == 0


def test_balance_sends_missing_experts_to_the_cpu(ckpt):
    plain, _ = run(ckpt, "smoe-ce-cr")
    ba, _ = run(ckpt, "smoe-ce-cr-ba")
    assert plain.metrics["cpu_experts"] == 0
    assert ba.metrics["cpu_experts"] > 0
    assert ba.metrics["loads"] < plain.metrics["loads"]


def test_bad_parameters_are_refused(ckpt):
    from smoe.errors import PolicyParamError

    with pytest.raises(PolicyParamError, match="accepted"):
        make_policy("smoe-ce-cr", replace="sideways")
    with pytest.raises(PolicyParamError):
        make_policy("smoe-ce-cr", costs="guessed")
    with pytest.raises(PolicyParamError):
        make_policy("smoe-ce-cr", window=0)
    with pytest.raises(PolicyParamError, match="prefetch_gate=0"):
        make_policy("smoe", prefetch_gate=0)


def test_score_lower_changes_weights_not_experts(ckpt):
    base, _ = run(ckpt, "smoe-ce")
    low, trace = run(ckpt, "score-lower", alpha=0.5, lower=0.1)
    assert low.metrics["substitutions"] == 0 and low.metrics["skips"] == 0
    assert low.metrics["loads"] == base.metrics["loads"]  # same experts computed, same cache behaviour
    assert all((np.asarray(r["actions"]) != Action.SUBSTITUTE).all() for r in trace)


class FakeCtx:
    """A prefetch context whose predictions are the given scores, as the runtime hands them: [T,E] float32 arrays."""

    def __init__(self, layer, nxt, scores):
        self.layer, self.next_layer, self._scores = layer, nxt, np.array(scores, dtype=np.float32)

    def predict(self, attention=True):
        return self._scores


def test_prefetch_loads_predicted_top_score_and_never_evicts_shielded():
    pol = make_policy("smoe-ce-cr-pre", window=2, prefetch_share=1.0)
    pool = FakePool(capacity=2)
    step(pol, pool, 0, [[0.7, 0.1, 0.1, 0.1]], [[0]])  # (0,0) resident: layer 0 is being computed
    step(pol, pool, 1, [[0.1, 0.6, 0.2, 0.1]], [[1]])  # (1,1) resident
    v = view(pool, 0, [[0.7, 0.1, 0.1, 0.1]], [[0]])
    pol.plan(v)
    # predicted layer-1 scores: expert 2 is top-score (0.8 >= 1.25 * 0.1); expert 1 is not predicted
    pf = pol.prefetch(v, FakeCtx(0, 1, [[0.05, 0.05, 0.8, 0.1]]))
    assert pf.loads == [(1, 2)]
    assert pf.evict == [(1, 1)]  # the only unshielded victim; (0,0) belongs to the layer being computed


class CountingCtx(FakeCtx):
    """A prefetch context that counts the predictions a policy reads."""

    def __init__(self, layer, nxt, scores):
        super().__init__(layer, nxt, scores)
        self.predictions = 0

    def predict(self, attention=True):
        self.predictions += 1
        return super().predict(attention)


def test_prefetch_gate_predicts_a_layer_only_after_it_needed_the_link():
    pol = make_policy("smoe-ce-cr-pre", window=2, prefetch_share=1.0, prefetch_gate=2, alpha=0.0)
    pool = FakePool(capacity=4, resident=[(0, 0), (1, 1)])
    predicted = [[0.05, 0.05, 0.8, 0.1]]  # layer 1's expert 2 predicted top-score

    def layer0():
        """Layer 0 runs: how many predictions of layer 1 did its prefetch read?"""
        v = view(pool, 0, [[0.7, 0.1, 0.1, 0.1]], [[0]])
        pol.plan(v)
        ctx = CountingCtx(0, 1, predicted)
        pf = pol.prefetch(v, ctx)
        if pf is not None:  # what the engine does with a prefetch: the keys become resident, not yet used
            for key in pf.evict:
                pool.slot_of.pop(key), pool.by_layer[key[0]].discard(key[1])
            for key in pf.loads:
                pool.add(key, prefetched=True)
        return ctx.predictions

    def gate_after(layer1_expert):
        """Layer 1 routes to `layer1_expert`, then layer 0 runs."""
        scores = [0.1] * 4
        scores[layer1_expert] = 0.7
        step(pol, pool, 1, [scores], [[layer1_expert]])
        return layer0()

    assert layer0() == 1  # before layer 1 has any history the gate is open: (1, 2) is prefetched
    assert gate_after(1) == 0  # its only pass a hit on a long-resident expert: no need, no prediction
    assert gate_after(2) == 1  # a hit on (1, 2), which the prefetch brought and nothing had used: what it saved
    pool.prefetched.clear()  # the engine marks it used
    assert gate_after(1) == 1  # that need is one of its last two passes
    assert gate_after(1) == 0  # two passes of long-resident hits close it again
    assert gate_after(3) == 1  # expert 3 missing: loaded, and the layer needs the link again
    assert make_policy("smoe").prefetch_gate is None  # the paper's SMoE predicts every layer


def test_prefetch_gate_reads_fewer_predictions_through_the_runtime(ckpt):
    every, _ = run(ckpt, "smoe", slots=14, alpha=0.0)  # slots where some layers hit for a step or more
    gated, _ = run(ckpt, "smoe", slots=14, alpha=0.0, prefetch_gate=1)
    assert every.tokens == gated.tokens  # prefetching never changes what is computed at alpha 0
    assert 0 < gated.metrics["predictions"] < every.metrics["predictions"]
    assert every.metrics["decode"]["predictions"] == every.metrics["predictions"]  # the prefill never predicts


def test_prefetch_runs_through_the_runtime_and_is_used(ckpt):
    res, trace = run(ckpt, "smoe-ce-cr-pre", slots=8)
    m = res.metrics
    assert m["prefetches"] > 0
    assert 0 < m["prefetch_used"] <= m["prefetches"]
    assert m["prefetch_in_topk"] <= m["prefetches"]
    assert sum(len(r["prefetch"]) for r in trace) == m["prefetches"]
    off, _ = run(ckpt, "smoe-ce-cr", slots=8)
    assert res.metrics["hit_rate"] > off.metrics["hit_rate"]


def test_prefetch_does_not_change_the_tokens_at_alpha_zero(ckpt):
    ref, _ = run(ckpt, "all-gpu", slots=1000)
    for mode in ("attention", "no-attention", "early", "early-attention"):
        res, _ = run(ckpt, "smoe-ce-cr-pre", slots=8, alpha=0.0, prefetch_mode=mode)
        assert res.tokens == ref.tokens


def test_early_prefetch_runs_through_the_runtime_and_decides_by_its_own_prediction(ckpt):
    """smoe-early reads the prediction the engine queued before planning (`ctx.early`, no predictor pass of its
    own): it prefetches, its prefetches are used, and it decides otherwise than the attention predictor."""
    early, trace = run(ckpt, "smoe-early", slots=8)
    paper, paper_trace = run(ckpt, "smoe", slots=8)
    m = early.metrics
    assert m["prefetches"] > 0 and 0 < m["prefetch_used"] <= m["prefetches"]
    assert m["decode"]["predict_time_s"] > 0
    assert [r["prefetch"] for r in trace] != [r["prefetch"] for r in paper_trace]
    assert make_policy("smoe-early").early_prediction and not make_policy("smoe").early_prediction
    with_attention = make_policy("smoe", prefetch_mode="early-attention")
    assert with_attention.early_prediction and with_attention.early_attention
    assert not make_policy("smoe-early").early_attention


def test_prefetch_accuracy_from_a_trace(ckpt):
    from smoe.trace_stats import prefetch_accuracy

    # three generate calls, each counting its steps from 0: a prefetch is judged in its own call
    rt = Runtime(ckpt, "smoe-ce-cr-pre", cache_experts=8, batch=1, trace=True)
    try:
        res = rt.generate_all(PROMPTS + PROMPTS[:1], max_new_tokens=16)
        trace = rt.engine.trace
    finally:
        rt.close()
    assert [r["step"] for r in trace].count(0) > len({r["layer"] for r in trace})  # steps repeat across calls
    acc = prefetch_accuracy(trace, alpha=0.25, k=2)
    assert acc["prefetched"] == res.metrics["prefetches"] > 0
    assert 0 <= acc["top_score_share"] <= acc["routed_share"] <= 1
    # routed_share counts what the runtime counts as prefetch_in_topk
    assert acc["routed_share"] * acc["prefetched"] == pytest.approx(res.metrics["prefetch_in_topk"])


def test_prefetch_accuracy_counts_by_hand():
    from smoe.trace_stats import prefetch_accuracy

    recs = [
        {"step": 1, "layer": 0, "scores": torch.tensor([[0.5, 0.3, 0.1, 0.1]]), "topk": torch.tensor([[0, 1]]),
         "prefetch": [(1, 2), (1, 3), (1, 0)]},
        {"step": 1, "layer": 1, "scores": torch.tensor([[0.1, 0.05, 0.6, 0.25]]), "topk": torch.tensor([[2, 3]]),
         "prefetch": []},
    ]
    # layer 1: S_3 = 0.1; expert 2 (0.6) top-score, expert 3 (0.25) top-score, expert 0 not routed
    acc = prefetch_accuracy(recs, alpha=0.25, k=2)
    assert acc == {"prefetched": 3, "top_score_share": 2 / 3, "routed_share": 2 / 3}
    # a second generate call, its steps from 0 again: its prefetch is judged by its own layer 1, and the first
    # call's by the first call's, though both have step 1
    later = [
        {"step": 0, "layer": 0, "scores": torch.tensor([[0.25] * 4]), "topk": torch.tensor([[0, 1]]), "prefetch": []},
        {"step": 1, "layer": 0, "scores": torch.tensor([[0.5, 0.3, 0.1, 0.1]]), "topk": torch.tensor([[0, 1]]),
         "prefetch": [(1, 0)]},
        {"step": 1, "layer": 1, "scores": torch.tensor([[0.6, 0.3, 0.05, 0.05]]), "topk": torch.tensor([[0, 1]]),
         "prefetch": []},
    ]
    acc = prefetch_accuracy(recs + later, alpha=0.25, k=2)
    assert acc == {"prefetched": 4, "top_score_share": 3 / 4, "routed_share": 3 / 4}


@pytest.mark.parametrize("window", [None, 1, 3, 8])
def test_compiled_victims_follow_the_eviction_rank(window):
    """`SMoE.victims` (compiled) gives the victims `CachingPolicy.victims` finds by `SMoE.eviction_rank` (numpy), in the
    same order, on random caches with prefetched experts, layers never seen, tied means and tied recency."""
    from smoe.caching import CachingPolicy

    rng = np.random.default_rng(window or 0)
    L, E = 5, 16
    info = ModelInfo(moe_layers=tuple(range(1, 2 * L, 2)), num_experts=E, top_k=2, expert_bytes=1000, model_type="test")
    for trial in range(40):
        pol = make_policy("smoe", window=window)
        pol._bind(info)
        pol.in_cache[:] = rng.random((L, E)) < 0.6
        levels = rng.choice([0.0, 0.125, 0.25, 1e-9, 0.3], size=pol.ring.shape).astype(np.float32)  # ties, tiny values
        pol.ring[:] = np.where(rng.random(pol.ring.shape) < 0.5, levels, rng.random(pol.ring.shape)) if trial % 2 \
            else levels
        pol.passes[:] = rng.integers(0, 12, size=L)
        pol.passes[0] = 0  # a layer never seen: mean 0
        pol.recency[:] = rng.integers(0, 6, size=(L, E))  # many ties
        pool = FakePool(capacity=L * E)
        cached = [(info.moe_layers[r], e) for r, e in zip(*np.nonzero(pol.in_cache))]
        for key in cached:
            pool.add(key, prefetched=rng.random() < 0.15)
        v = view(pool, info.moe_layers[2], [[0.0] * E], [[0, 1]])
        allowed = rng.random((L, E)) < 0.8
        for wanted in (1, 2, 3, 7, L * E):
            fast = list(pol.victims(v, allowed, wanted))
            slow = list(CachingPolicy.victims(pol, v, allowed, wanted))
            assert fast == slow[:wanted]
            assert len(fast) == min(wanted, int((pol.in_cache & allowed).sum()))


_L, _E = 5, 16  # the random caches' layers and experts
_INFO = ModelInfo(moe_layers=tuple(range(1, 2 * _L, 2)), num_experts=_E, top_k=2, expert_bytes=1000, model_type="test")


def _random_state(rng, pol, only: int | None = None) -> FakePool:
    """Bind `pol` (an SMoE policy) to _INFO and give it a random state: cached experts (besides row `only`, where
    given, almost none), windowed scores, passes, recency and birth with many ties, tick 100. -> a pool of the cached
    experts with 0-2 free slots, few or most of them prefetched and not yet used."""
    pol._bind(_INFO)
    pol.in_cache[:] = rng.random((_L, _E)) < rng.choice([0.3, 0.6, 0.9])
    if only is not None:
        pol.in_cache[np.arange(_L) != only] &= rng.random((_L - 1, _E)) < 0.05
    levels = rng.choice([0.0, 0.125, 0.25, 1e-9, 0.3], size=pol.ring.shape).astype(np.float32)  # ties, tiny values
    pol.ring[:] = np.where(rng.random(pol.ring.shape) < 0.5, levels, rng.random(pol.ring.shape))
    pol.passes[:] = rng.integers(0, 12, size=_L)
    pol.recency[:] = rng.integers(0, 6, size=(_L, _E))  # many ties
    pol.born[:] = rng.integers(0, 6, size=(_L, _E))
    pol.tick = 100
    cached = [(_INFO.moe_layers[r], e) for r, e in zip(*np.nonzero(pol.in_cache))]
    pol.cached = set(cached)
    pool = FakePool(capacity=len(cached) + int(rng.integers(0, 3)))  # 0-2 free slots
    share = rng.choice([0.15, 0.95])  # few or most of the cached experts prefetched and not yet used
    for key in cached:
        pool.add(key, prefetched=rng.random() < share)
    return pool


@pytest.mark.parametrize("window", [None, 3])
def test_compiled_prefetch_placement_follows_prefetch_plan(window):
    """`SMoE._placed` (compiled, `place_prefetch`) loads, evicts and leaves the policy's state exactly as the
    interpreted `CachingPolicy.prefetch_plan` with SMoE's victims: free slots first, then victims outside the layer
    being computed, the prefetched experts not yet used and the prefetch's own loads; it stops when none is left,
    and loads at most `prefetch_share` of the slots' worth of prefetched experts. Random caches with tied scores and
    recency."""
    import copy

    from smoe.caching import CachingPolicy

    rng = np.random.default_rng(7 + (window or 0))
    L, E, info = _L, _E, _INFO
    evictions = stops = into_free = 0
    for trial in range(300):
        pol = make_policy("smoe", window=window, prefetch_share=float(rng.choice([0.5, 1.0])))
        pool = _random_state(rng, pol)
        cur, nxt = rng.choice(L, size=2, replace=False)
        missing = [e for e in range(E) if not pol.in_cache[nxt, e]]
        if not missing:
            continue
        ids = rng.permutation(missing)[:rng.integers(1, len(missing) + 1)].tolist()  # a wish list, best first
        v = view(pool, info.moe_layers[cur], [[0.0] * E], [[0, 1]])
        slow = copy.deepcopy(pol)
        pol._want[:len(ids)] = ids
        fast_plan = pol._placed(v, info.moe_layers[nxt], len(ids))
        room = int(slow.prefetch_share * pool.capacity) - len(pool.prefetched)
        want = [(info.moe_layers[nxt], e) for e in ids][:max(room, 0)]
        slow_plan = CachingPolicy.prefetch_plan(slow, v, want, protected=set(pool.prefetched))
        assert (fast_plan is None) == (slow_plan is None)
        if fast_plan is not None:
            assert (fast_plan.loads, fast_plan.evict) == (slow_plan.loads, slow_plan.evict)
            evictions += len(fast_plan.evict)
            into_free += len(fast_plan.loads) - len(fast_plan.evict)
            stops += len(fast_plan.loads) < len(want)
        for name in ("in_cache", "recency", "born"):
            np.testing.assert_array_equal(getattr(pol, name), getattr(slow, name))
        assert (pol.tick, pol.cached) == (slow.tick, slow.cached)
    assert evictions > 100 and into_free > 50 and stops > 5  # every branch exercised


@pytest.mark.parametrize("window", [8, None])
def test_compiled_room_follows_cache_plan(window):
    """`SMoE._room` (compiled, `place_loads`) touches, inserts, evicts, discards and leaves the policy's state exactly
    as the interpreted `CachingPolicy.cache_plan` with SMoE's victims: hits touched in ascending order, loads into
    free slots, then over victims outside the layer (the prefetched experts not yet used last), then over the layer's
    own experts placed so far when none is left. Random caches with tied scores and recency."""
    import copy

    from smoe.caching import CachingPolicy
    from smoe.plan import _CPU, _HIT, _LOAD

    rng = np.random.default_rng(11 + (window or 0))
    L, E, info = _L, _E, _INFO
    evictions = discards = into_free = 0
    for trial in range(300):
        pol = make_policy("smoe", window=window)
        cur = int(rng.integers(L))
        pool = _random_state(rng, pol, only=cur if trial % 5 == 0 else None)  # then the layer's own slots are reused
        resident = np.flatnonzero(pol.in_cache[cur])
        missing = np.flatnonzero(~pol.in_cache[cur])
        hits = np.sort(rng.permutation(resident)[:rng.integers(0, len(resident) + 1)])
        loads = np.sort(rng.permutation(missing)[:rng.integers(0, len(missing) + 1)])
        on_cpu = [e for e in missing.tolist() if e not in loads.tolist()][:2]
        if not len(loads) or not pool.capacity:
            continue
        v = view(pool, info.moe_layers[cur], [[0.0] * E], [[0, 1]])
        slow = copy.deepcopy(pol)
        fast = pol._room(v, hits.astype(np.int64), loads.astype(np.int64))
        placement = {**dict.fromkeys(loads.tolist(), _LOAD), **dict.fromkeys(on_cpu, _CPU),
                     **dict.fromkeys(hits.tolist(), _HIT)}  # in no particular order, as a plan's dict may be
        assert fast == CachingPolicy.cache_plan(slow, v, placement)
        evictions += len(fast[0])
        discards += len(fast[1])
        into_free += len(loads) - len(fast[0]) - len(fast[1])
        for name in ("in_cache", "recency", "born"):
            np.testing.assert_array_equal(getattr(pol, name), getattr(slow, name))
        assert (pol.tick, pol.cached) == (slow.tick, slow.cached)
    assert evictions > 100 and discards > 5 and into_free > 50  # every branch exercised
