"""The runtime checks every plan: a policy that returns a plan which cannot be executed is stopped with a
PolicyError naming the policy and the broken rule. And policies that change the computed set (substitute,
skip) run and are counted correctly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from smoe.errors import PolicyError, SmoeError
from smoe.plan import Action, CacheView, LayerView, ModelInfo, Plan, check_plan
from smoe.policy import ExpertPolicy, register_policy
from smoe.runtime import Runtime
from smoe_test_support import NEW_TOKENS, PROMPTS, FakePool, collect_logits

FAMILY = "qwen2_moe"
BATCH = len(PROMPTS)


def hit_or_load(view: LayerView) -> dict[int, Action]:
    resident = view.cache.resident(view.layer)
    return {e: Action.HIT if e in resident else Action.LOAD for e in view.needed()}


def preload_all(model: ModelInfo, capacity: int):
    return [(layer, e) for layer in model.moe_layers for e in range(model.num_experts)]


# ---- invalid plans ---------------------------------------------------------------------------------------
@register_policy("test-bad-hit")
class BadHit(ExpertPolicy):
    """Claims every routed expert is resident, from an empty cache."""

    def plan(self, view):
        return Plan.per_expert(view, {e: Action.HIT for e in view.needed()})


@register_policy("test-bad-no-evict")
class NoEvict(ExpertPolicy):
    """Loads what is missing but never evicts: fails as soon as the slots are full."""

    def plan(self, view):
        return Plan.per_expert(view, hit_or_load(view))


@register_policy("test-bad-evict-used")
class EvictUsed(ExpertPolicy):
    """Evicts a resident expert that this very layer computes."""

    def setup(self, model, capacity):
        return preload_all(model, capacity)

    def plan(self, view):
        resident = view.cache.resident(view.layer)
        used = [e for e in view.needed() if e in resident]
        return Plan.per_expert(view, hit_or_load(view), evict=[(view.layer, used[0])])


@register_policy("test-bad-standin")
class BadStandin(ExpertPolicy):
    """Runs everything on the CPU, except that token 0 substitutes its 2nd expert with an expert that is
    neither resident nor loaded nor run by anyone."""

    def plan(self, view):
        topk = view.topk.numpy()
        actions = np.full(topk.shape, int(Action.CPU), dtype=np.int8)
        standins = np.full(topk.shape, -1, dtype=np.int64)
        unused = [e for e in range(view.model.num_experts) if e not in set(topk.flatten().tolist())]
        # the whole batch may route to every expert in the prefill: then pick one no CPU action covers
        if not unused:
            actions[:, :] = int(Action.SKIP)
            unused = [int(topk[0, 0])]
        actions[0, 1] = int(Action.SUBSTITUTE)
        standins[0, 1] = unused[0]
        return Plan(actions=actions, standins=standins)


@register_policy("test-bad-shape")
class BadShape(ExpertPolicy):
    """One action too many per token."""

    def plan(self, view):
        T, K = view.topk.shape
        return Plan(actions=np.full((T, K + 1), int(Action.CPU), dtype=np.int8))


@register_policy("test-bad-code")
class BadCode(ExpertPolicy):
    """Action codes outside the Action enum."""

    def plan(self, view):
        return Plan(actions=np.full(tuple(view.topk.shape), 9, dtype=np.int8))


@register_policy("test-bad-preload")
class BadPreload(ExpertPolicy):
    """Asks for more preloaded experts than there are slots."""

    def setup(self, model, capacity):
        return preload_all(model, capacity)[: capacity + 1]

    def plan(self, view):
        return Plan.per_expert(view, hit_or_load(view))


INVALID = [
    ("test-bad-hit", 1000, r"HIT for expert \d+, which is not resident"),
    ("test-bad-no-evict", 4, r"loads need slots"),
    ("test-bad-evict-used", 1000, r"evicts expert \d+, which this layer computes"),
    ("test-bad-standin", 1000, r"stand-in \d+ for token 0 is not resident"),
    ("test-bad-shape", 1000, r"actions have shape \(\d+, 3\), expected \(\d+, 2\)"),
    ("test-bad-code", 1000, r"every routed expert needs an action"),
    ("test-bad-preload", 4, r"preloads 5 experts into 4 slots"),
]


@pytest.mark.parametrize("name,slots,message", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_plan_is_refused_naming_the_policy(name, slots, message, tiny):
    rt = None
    try:
        with pytest.raises(PolicyError, match=message) as err:
            rt = Runtime(tiny(FAMILY), name, device="cpu", cache_experts=slots, batch=BATCH)
            rt.generate(PROMPTS, 4)
    finally:
        if rt is not None:
            rt.close()
    assert f"policy {name!r}" in str(err.value)
    assert isinstance(err.value, SmoeError)


def test_no_evict_policy_runs_until_the_cache_is_full(tiny):
    """The capacity check is about the cache filling up, not about loading at all: with every expert's slot
    available the same never-evicting policy runs fine."""
    rt = Runtime(tiny(FAMILY), "test-bad-no-evict", device="cpu", cache_experts=1000, batch=BATCH)
    try:
        res = rt.generate(PROMPTS, 4)
    finally:
        rt.close()
    assert res.metrics["loads"] <= rt.memory.capacity and res.metrics["loads"] > 0


# ---- check_plan directly, on a hand-made cache ---------------------------------------------------------
INFO = ModelInfo(moe_layers=(0, 1), num_experts=4, top_k=2, expert_bytes=100, model_type="test")


def make_view(pool, topk, layer=0):
    topk = np.array(topk, dtype=np.int64)
    scores = np.full((topk.shape[0], INFO.num_experts), 0.1, dtype=np.float32)
    return LayerView(layer=layer, phase="decode", step=1, scores_np=scores, topk_np=topk, cache=CacheView(pool),
                     model=INFO)


def test_check_plan_rules():
    view = make_view(FakePool(4, resident=[(0, 0), (1, 3)]), [[0, 1], [1, 2]])
    ok = check_plan(Plan.per_expert(view, {0: Action.HIT, 1: Action.LOAD, 2: Action.CPU}), view, "p")
    assert ok.loads == [1] and ok.where[2] == Action.CPU and ok.changed == []
    assert ok.tokens == {0: [0], 1: [1, 0], 2: [1]}  # HF order: by top-k column, then token
    with pytest.raises(PolicyError, match="already resident"):
        check_plan(Plan.per_expert(view, {0: Action.LOAD, 1: Action.LOAD, 2: Action.LOAD}), view, "p")
    # expert 1: LOAD for t0 (rank 2), CPU for t1 (rank 1); the check walks HF's (rank, token) order
    with pytest.raises(PolicyError, match="both CPU and LOAD"):
        check_plan(Plan(actions=np.array([[0, 1], [2, 1]])), view, "p")
    with pytest.raises(PolicyError, match=r"evicts \(1, 2\), which is not resident"):
        check_plan(Plan.per_expert(view, {0: Action.HIT, 1: Action.CPU, 2: Action.CPU}, evict=[(1, 2)]), view, "p")
    with pytest.raises(PolicyError, match="evicted twice"):
        check_plan(Plan.per_expert(view, {0: Action.HIT, 1: Action.CPU, 2: Action.CPU}, evict=[(1, 3), (1, 3)]),
                   view, "p")
    with pytest.raises(PolicyError, match="discards expert 2"):
        check_plan(Plan.per_expert(view, {0: Action.HIT, 1: Action.CPU, 2: Action.CPU}, discard=[2]), view, "p")
    # token 0 substitutes expert 1 with expert 0, which it already computes
    with pytest.raises(PolicyError, match="compute expert 0 twice"):
        check_plan(Plan(actions=np.array([[0, 3], [2, 2]]), standins=np.array([[-1, 0], [-1, -1]])), view, "p")
    with pytest.raises(PolicyError, match="invalid stand-in 7"):
        check_plan(Plan(actions=np.array([[0, 3], [2, 2]]), standins=np.array([[-1, 7], [-1, -1]])), view, "p")
    with pytest.raises(PolicyError, match="scale"):
        check_plan(Plan(actions=np.array([[0, 2], [2, 2]]), scale=-np.ones((2, 2))), view, "p")


def test_an_all_hit_plan_is_checked_as_its_codes_would_be():
    """`Plan.hits()` (no [T,K] codes: what `Plan.per_expert` makes when every routed expert is a HIT) gives the same
    checked plan as the explicit codes, and the same errors."""
    pool = FakePool(5, resident=[(0, 0), (0, 1), (0, 2), (1, 3)])
    for topk in ([[2, 0]], [[0, 1], [1, 2]], [[1, 0], [2, 1], [0, 2]]):
        view = make_view(pool, topk)
        codes = Plan(actions=np.zeros((len(topk), 2), dtype=np.int8), evict=[(1, 3)])
        fast = Plan.per_expert(view, dict.fromkeys(view.needed(), Action.HIT), evict=[(1, 3)])
        assert fast.actions is None and Plan.hits().actions is None
        assert check_plan(fast, view, "p") == check_plan(codes, view, "p")  # each expert's token rows in HF's order
    view = make_view(pool, [[0, 3], [1, 0]])  # expert 3 of layer 0 is not resident
    for plan in (Plan.hits(), Plan(actions=np.zeros((2, 2), dtype=np.int8))):
        with pytest.raises(PolicyError, match="HIT for expert 3, which is not resident"):
            check_plan(plan, view, "p")
    with pytest.raises(PolicyError, match="evicts expert 0, which this layer computes"):
        check_plan(Plan.hits(evict=[(0, 0)]), make_view(pool, [[0, 1]]), "p")
    # a placement that leaves a routed expert out is not an all-hit plan: the codes name the gap
    with pytest.raises(PolicyError, match="every routed expert needs an action"):
        check_plan(Plan.per_expert(make_view(pool, [[0, 1]]), {0: Action.HIT}), make_view(pool, [[0, 1]]), "p")


def test_check_plan_slot_feasibility():
    # two free slots, three loads: refused without eviction, admitted with one eviction or one discard reuse
    view = make_view(FakePool(3, resident=[(1, 0)]), [[1, 2], [2, 3]])
    loads = {1: Action.LOAD, 2: Action.LOAD, 3: Action.LOAD}
    with pytest.raises(PolicyError, match="3 loads need slots, but only 2 are free"):
        check_plan(Plan.per_expert(view, loads), view, "p")
    assert check_plan(Plan.per_expert(view, loads, evict=[(1, 0)]), view, "p").loads == [1, 2, 3]
    assert check_plan(Plan.per_expert(view, loads, discard=[1]), view, "p").discard == {1}


# ---- valid plans that change the computed set ------------------------------------------------------------
@register_policy("test-substitute-second")
class SubstituteSecond(ExpertPolicy):
    """Preloads every expert; each token's 2nd routed expert is replaced by the lowest-id resident expert that
    is not in its top-k (when there is one; else it is computed as routed)."""

    def setup(self, model, capacity):
        return preload_all(model, capacity)

    def plan(self, view):
        topk = view.topk.numpy()
        resident = view.cache.resident(view.layer)
        actions = np.empty(topk.shape, dtype=np.int8)
        standins = np.full(topk.shape, -1, dtype=np.int64)
        place = hit_or_load(view)
        for t in range(topk.shape[0]):
            for j in range(topk.shape[1]):
                cands = sorted(resident - set(topk[t].tolist()))
                if j == 1 and cands:
                    actions[t, j], standins[t, j] = Action.SUBSTITUTE, cands[0]
                else:
                    actions[t, j] = place[int(topk[t, j])]
        return Plan(actions=actions, standins=standins)


@register_policy("test-skip-second")
class SkipSecond(ExpertPolicy):
    """Every token skips its 2nd routed expert."""

    def setup(self, model, capacity):
        return preload_all(model, capacity)

    def plan(self, view):
        topk = view.topk.numpy()
        place = hit_or_load(view)
        actions = np.vectorize(lambda e: int(place[int(e)]))(topk).astype(np.int8)
        actions[:, 1::2] = Action.SKIP
        return Plan(actions=actions)


def _run(tiny, name):
    rt = Runtime(tiny(FAMILY), name, device="cpu", cache_experts=1000, batch=BATCH, trace=True)
    try:
        logits, _, cb = collect_logits()
        res = rt.generate(PROMPTS, NEW_TOKENS, on_logits=cb)
        trace = list(rt.engine.trace)
    finally:
        rt.close()
    return rt, res, trace, logits


def test_substituting_policy_runs_and_counts(tiny, reference):
    rt, res, trace, logits = _run(tiny, "test-substitute-second")
    m = res.metrics
    rows = sum(r["topk"].shape[0] for r in trace)  # (token, layer) pairs over the run
    assert m["substitutions"] > 0
    assert m["substitutions"] == rows  # with every expert resident, every token has a stand-in
    assert m["skips"] == 0
    assert len(res.tokens) == BATCH and all(len(t) == NEW_TOKENS for t in res.tokens)
    assert m["hit_rate"] == 1.0 and m["loads"] == 0
    L, K = len(rt.info.moe_layers), rt.info.top_k
    assert m["decode"]["uses"] == BATCH * (NEW_TOKENS - 1) * L * K  # a substitute is still a use
    for r in trace:  # the stand-in is never one of the token's own experts
        sub = r["actions"] == Action.SUBSTITUTE
        assert sub[:, 1].all() and not sub[:, 0].any()
        for t in range(r["topk"].shape[0]):
            assert int(r["standins"][t, 1]) not in r["topk"][t].tolist()
    # substitution changes what is computed, so the logits leave the exact reference
    ref = reference(FAMILY)
    assert (logits[0] - ref.logits[0]).abs().max() > 1e-3


def test_skipping_policy_counts_uses_and_skips(tiny, reference):
    rt, res, trace, logits = _run(tiny, "test-skip-second")
    m = res.metrics
    L, K = len(rt.info.moe_layers), rt.info.top_k
    decode_tokens = BATCH * (NEW_TOKENS - 1)
    assert m["skips"] > 0
    assert m["decode"]["skips"] == decode_tokens * L  # one of the two experts per token and layer
    assert m["decode"]["uses"] == decode_tokens * L * K - m["decode"]["skips"]
    assert m["skips"] == sum(r["topk"].shape[0] for r in trace)
    assert m["substitutions"] == 0 and m["hit_rate"] == 1.0
    assert len(res.tokens) == BATCH and all(len(t) == NEW_TOKENS for t in res.tokens)
    ref = reference(FAMILY)
    assert (logits[0] - ref.logits[0]).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["qwen2_moe", "qwen3_moe", "olmoe", "mixtral"])
def test_skipping_the_second_expert_equals_the_top1_model(family, tiny):
    """Independent check of the family weight rule for a changed set: a token that keeps only its best expert
    weights it by its own router probability (renormalised to 1 where the family renormalises), which is
    exactly what the family's own model computes with num_experts_per_tok=1."""
    from transformers import AutoModelForCausalLM

    from smoe.generate import greedy_decode

    rt = Runtime(tiny(family), "test-skip-second", device="cpu", cache_experts=1000, batch=BATCH)
    try:
        ids, mask = rt.encode(PROMPTS)
        logits, _, cb = collect_logits()
        res = rt.generate(PROMPTS, NEW_TOKENS, on_logits=cb)
    finally:
        rt.close()
    top1 = AutoModelForCausalLM.from_pretrained(tiny(family), dtype=torch.float32, num_experts_per_tok=1).eval()
    assert top1.config.num_experts_per_tok == 1
    ref_logits: list = []
    tokens = greedy_decode(top1, ids, mask, NEW_TOKENS, on_logits=lambda s, lg: ref_logits.append(lg.clone())).tokens
    assert res.tokens == tokens.tolist()
    for got, want in zip(logits, ref_logits):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


# ---- regressions: plans and inputs that once crashed the runtime -------------------------------------------
@register_policy("test-skip-all")
class SkipAll(ExpertPolicy):
    """Drops every routed expert: a valid plan (check_plan accepts it), the block keeps its shared expert."""

    def plan(self, view):
        return Plan(actions=np.full(tuple(view.topk.shape), int(Action.SKIP), dtype=np.int8))


def test_check_plan_accepts_a_layer_that_skips_everything():
    view = make_view(FakePool(4), [[0, 1], [1, 2]])
    ex = check_plan(Plan(actions=np.full((2, 2), int(Action.SKIP))), view, "p")
    assert ex.skips == 4 and ex.tokens == {} and ex.loads == []


def test_a_layer_where_every_expert_is_skipped_runs(tiny):
    rt = Runtime(tiny(FAMILY), "test-skip-all", device="cpu", cache_experts=4, batch=BATCH)
    try:
        res = rt.generate(PROMPTS, 3)
    finally:
        rt.close()
    assert res.metrics["decode"]["uses"] == 0 and res.metrics["loads"] == 0
    assert res.metrics["decode"]["skips"] == BATCH * 2 * len(rt.info.moe_layers) * rt.info.top_k


def test_skip_policy_with_large_alpha_runs(tiny):
    rt = Runtime(tiny(FAMILY), "skip", device="cpu", cache_experts=1000, batch=1, policy_params={"alpha": "3"})
    try:
        res = rt.generate(["hello there"], NEW_TOKENS)
    finally:
        rt.close()
    assert res.metrics["skips"] > 0


def test_standins_of_the_wrong_shape_are_a_policy_error():
    view = make_view(FakePool(4, resident=[(0, 0), (0, 1), (0, 2)]), [[0, 1], [1, 2]])
    with pytest.raises(PolicyError, match="standins"):
        check_plan(Plan(actions=np.array([[0, 3], [0, 0]]), standins=np.array([[2]])), view, "p")


def test_evict_keys_must_be_pairs():
    view = make_view(FakePool(4, resident=[(0, 3)]), [[0, 1], [1, 2]])
    ex = check_plan(Plan(actions=np.full((2, 2), int(Action.LOAD)), evict=[[0, 3]]), view, "p")
    assert ex.evict == [(0, 3)]  # lists are read as pairs
    with pytest.raises(PolicyError, match="pairs"):
        check_plan(Plan(actions=np.full((2, 2), int(Action.LOAD)), evict=[3]), view, "p")


def test_staging_ring_never_rewrites_a_half_before_its_copies_are_done():
    """The pinned staging buffer's placement (smoe.staging.Ring, what every small host->device copy of a GPU
    decode step goes through): copies in one half never overlap and start aligned; moving to the other half
    records an event for the half left, and a half is written again only after the event recorded when it was
    last left has been waited for."""
    from smoe.staging import ALIGN, Ring

    log = []

    class Event:
        def __init__(self):
            self.id = len([x for x in log if x[0] == "record"])

        def record(self):
            log.append(("record", self.id))

        def synchronize(self):
            log.append(("wait", self.id))

    ring = Ring(1024, Event)  # two halves of 512 bytes
    spans = [(ring.place(n), n) for n in (8, 100, 64, 200)]  # fits 512 bytes with 64-byte alignment
    assert [s for s, _ in spans] == [0, 64, 192, 256] and all(s % ALIGN == 0 for s, _ in spans)
    assert all(a + n <= b for (a, n), (b, _) in zip(spans, spans[1:])) and log == []
    assert ring.place(300) == 512  # does not fit: the second half, after recording the first half's event
    assert log == [("record", 0)]
    assert ring.place(100) == 512 + 320
    assert ring.place(100) == 0  # 448 + 100 > 512: back to the first half, after waiting for its event
    assert log == [("record", 0), ("record", 1), ("wait", 0)]
    with pytest.raises(AssertionError):
        ring.place(513)



def _walk_as_stated(acts, stands, experts, resident, E):
    """The check's rules for a plan's (token, expert) pairs written out in plain Python, in HF's order (by top-k rank,
    then token), stopping at the first broken one -> (message or None, where, tokens, changed, subs, skips)."""
    T, K = len(acts), len(acts[0])
    where, tokens, computed = {}, {}, [set() for _ in range(T)]
    subs = skips = 0
    borrowed = []
    for j in range(K):
        for t in range(T):
            a, e = acts[t][j], experts[t][j]
            if a in (Action.SUBSTITUTE, Action.SKIP):
                if a == Action.SKIP:
                    skips += 1
                    continue
                s = stands[t][j]
                if not 0 <= s < E:
                    return f"token {t} substitutes expert {e} with invalid stand-in {s}", None, None, None, 0, 0
                if s in resident:
                    where.setdefault(s, Action.HIT)
                else:
                    borrowed.append((t, s))
                subs += 1
                e = s
            elif a not in (Action.HIT, Action.LOAD, Action.CPU):
                return "every routed expert needs an action", None, None, None, 0, 0
            else:
                if (a == Action.HIT) != (e in resident):
                    if a == Action.HIT:
                        return f"HIT for expert {e}, which is not resident", None, None, None, 0, 0
                    return f"{Action(a).name} for expert {e}, which is already resident", None, None, None, 0, 0
                if where.setdefault(e, Action(a)) != a:
                    return f"expert {e} is both {where[e].name} and {Action(a).name}", None, None, None, 0, 0
            if e in computed[t]:
                return f"token {t} would compute expert {e} twice", None, None, None, 0, 0
            computed[t].add(e)
            tokens.setdefault(e, []).append(t)
    for t, s in borrowed:
        if s not in where:
            return f"stand-in {s} for token {t} is not resident and no", None, None, None, 0, 0
    changed = [t for t in range(T) if computed[t] != set(experts[t])]
    return None, where, tokens, changed, subs, skips


# the kinds of broken rule, as their messages word them (the unserved stand-in's before "not resident", which it holds)
KINDS = ("invalid stand-in", "needs an action", "and no", "not resident", "LOAD for", "CPU for", "is both", "twice")


def test_compiled_check_follows_the_rules_as_stated():
    """`check_plan`'s compiled walk (`smoe.plan_kernels.walk_plan`) accepts and rejects random plans as the rules
    written out in Python do, with the same first error, token rows, changed tokens and counts, whatever the codes'
    integer type, with or without stand-ins where none is read, and with scaled scores."""
    rng = np.random.default_rng(0)
    E = INFO.num_experts
    seen = set()
    for _ in range(3000):
        T, K = int(rng.integers(1, 4)), 2
        resident = set(rng.choice(E, size=int(rng.integers(0, E + 1)), replace=False).tolist())
        pool = FakePool(2 * E, resident=[(0, e) for e in resident])
        topk = [rng.choice(E, size=K, replace=False).tolist() for _ in range(T)]
        view = make_view(pool, topk)
        # mostly plausible actions (HIT where resident, LOAD/CPU where not), some of every kind, now and then a bad one
        acts = [[int(Action.HIT) if e in resident else int(rng.choice([Action.LOAD, Action.CPU])) for e in row]
                for row in topk]
        stands = [[-1] * K for _ in range(T)]
        for t in range(T):
            for j in range(K):
                if rng.random() < 0.35:
                    kinds = [Action.SUBSTITUTE, Action.SKIP, Action.HIT, Action.LOAD, Action.CPU, 7, -1]
                    acts[t][j] = int(rng.choice(kinds, p=[0.5, 0.2, 0.1, 0.05, 0.05, 0.05, 0.05]))
                    stands[t][j] = int(rng.integers(-1, E + 1))
        want, where, tokens, changed, subs, skips = _walk_as_stated(acts, stands, topk, resident, E)
        # the walk takes int8 codes (the policies') or any other integers; stand-ins may be left out where none is read
        dtype = [np.int8, np.int64, np.int32][int(rng.integers(0, 3))]
        no_sub = all(a != Action.SUBSTITUTE for row in acts for a in row)
        scale = None
        if want is None and rng.random() < 0.2:  # scaled scores: a token with a factor other than 1 counts as changed
            scale = np.where(rng.random((T, K)) < 0.3, 0.5, 1.0)
            changed = sorted(set(changed) | set(np.flatnonzero((scale != 1).any(axis=1)).tolist()))
        plan = Plan(actions=np.array(acts, dtype=dtype),
                    standins=None if no_sub and rng.random() < 0.5 else np.array(stands), scale=scale)
        if want is not None:
            with pytest.raises(PolicyError, match=want.replace("(", r"\(")):
                check_plan(plan, view, "p")
            seen.add(next(kind for kind in KINDS if kind in want))
            continue
        ex = check_plan(plan, view, "p")
        seen.add("ok")
        assert (ex.where, ex.tokens, ex.changed, ex.substitutions, ex.skips) == (where, tokens, changed, subs, skips)
        assert ex.experts == sorted(where) and len(ex.rows) == ex.starts[-1]  # the flat lists the engine reads
        assert (ex.scale is None) == (scale is None)
        seen.add("scaled" if scale is not None and changed else "ok")
        assert ex.loads == sorted(e for e, a in where.items() if a == Action.LOAD)
        if changed:
            for row, t in zip(ex.changed_mask, changed):
                assert set(np.flatnonzero(row).tolist()) == set(e for e, ts in tokens.items() if t in ts)
    assert seen == {"ok", "scaled", *KINDS}  # valid plans (some scaled) and each kind of broken rule were met


def test_staging_reads_back_arrays_the_next_read_does_not_overwrite():
    """`PinnedStaging.finish_to_host` on a GPU: after one wait on the channel's event, the first `arrays` reads come
    back as numpy copies of their pinned buffers (a layer's scores and top-k, a policy's predictions), the rest as
    tensor clones (the gate weights, in the model's dtype); none shares memory with the buffer the next read
    overwrites. The pinned buffers are stood in for by plain host tensors (no GPU here)."""
    from smoe.staging import PinnedStaging

    waits = []

    class Event:
        def synchronize(self):
            waits.append("scores")

    staging = PinnedStaging(torch.device("cpu"))
    staging.cuda, staging.reads = True, {"scores": Event()}  # the GPU branch, on stand-in buffers
    scores, topk, weights = torch.rand(3, 8), torch.arange(6).view(3, 2), torch.rand(3, 2).bfloat16()
    got = staging.finish_to_host(("scores", [scores, topk, weights]), arrays=2)
    assert waits == ["scores"] and [type(g) for g in got] == [np.ndarray, np.ndarray, torch.Tensor]
    assert (got[0].dtype, got[1].dtype, got[2].dtype) == (np.float32, np.int64, torch.bfloat16)
    expected = [scores.clone(), topk.clone(), weights.clone()]
    for buffer in (scores, topk, weights):  # the next read lands in the same buffers
        buffer.zero_()
    assert np.array_equal(got[0], expected[0].numpy()) and np.array_equal(got[1], expected[1].numpy())
    assert torch.equal(got[2], expected[2])
    again = staging.finish_to_host(("scores", [scores, topk, weights]), arrays=2)
    assert not again[0].any() and got[0].any()  # a new copy per read, from the buffer's one numpy view
    assert len(staging.arrays) == 2
