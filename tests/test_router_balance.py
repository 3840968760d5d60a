"""The SMoE mechanisms as pure functions: the expert-cache router (Alg. 1) and the CPU/PCIe split (Alg. 2)."""
import numpy as np
import pytest
import torch

from smoe.balance import split_load_cpu
from smoe.router import expert_cache_router


def row(scores: dict[int, float], E: int = 10) -> torch.Tensor:
    """One token's scores; unnamed experts share the remaining mass equally (all below every named one)."""
    t = torch.zeros(E)
    for e, s in scores.items():
        t[e] = s
    return t


def test_paper_running_example_hits_two_of_five_become_four():
    # Fig. 1: five selected experts a..e (ids 0-4), a and b resident; d and e are low-score and missing;
    # f and g (ids 5, 6) are resident with scores just below the selection: substitution gives 4/5 hits.
    s = row({0: 0.30, 1: 0.20, 2: 0.15, 3: 0.055, 4: 0.052, 5: 0.050, 6: 0.049, 7: 0.01})[None]
    resident = {0, 1, 5, 6}
    plain = expert_cache_router(s, k=5, alpha=0.0, resident=resident)[0]
    assert plain == [0, 1, 2, 3, 4]
    assert len(set(plain) & resident) == 2
    out = expert_cache_router(s, k=5, alpha=0.25, resident=resident)[0]
    assert out == [0, 1, 2, 5, 6]
    assert len(set(out) & resident) == 4  # 2/5 -> 4/5 hits; only expert 2 (top-score) still to load


def test_alpha_zero_returns_topk_with_lower_id_on_ties():
    s = torch.tensor([[0.1, 0.3, 0.3, 0.2, 0.1]])
    assert expert_cache_router(s, k=2, alpha=0.0, resident=set()) == [[1, 2]]
    assert expert_cache_router(s, k=3, alpha=0.0, resident={4}) == [[1, 2, 3]]


def test_low_score_expert_kept_when_resident():
    # k=2: L = 0.2; expert 1 (0.22 < 1.25*0.2) is low-score but resident -> kept
    s = torch.tensor([[0.5, 0.22, 0.2, 0.08]])
    assert expert_cache_router(s, k=2, alpha=0.25, resident={1, 2}) == [[0, 1]]


def test_low_score_expert_replaced_by_best_candidate_in_band():
    # expert 1 is low-score and missing; candidates in (0.75*0.2, 0.2]: 2 (0.2) and 3 (0.17), both resident
    s = torch.tensor([[0.43, 0.22, 0.2, 0.17]])
    assert expert_cache_router(s, k=2, alpha=0.25, resident={2, 3}) == [[0, 2]]


def test_candidate_outside_band_is_not_used_and_missing_expert_stays():
    s = torch.tensor([[0.5, 0.22, 0.2, 0.08]])  # expert 3 is resident but 0.08 <= 0.75*0.2
    assert expert_cache_router(s, k=2, alpha=0.25, resident={3}) == [[0, 1]]


def test_top_score_expert_is_never_replaced():
    s = torch.tensor([[0.6, 0.3, 0.05, 0.05]])  # both selected are >= 1.25 * 0.05
    assert expert_cache_router(s, k=2, alpha=0.25, resident={2, 3}) == [[0, 1]]


def test_fewer_candidates_than_needed_fills_with_highest_scoring_missing():
    # k=3, L = 0.20 (expert 3); experts 1 (0.23) and 2 (0.21) are low-score and missing; one candidate (4)
    s = torch.tensor([[0.36, 0.23, 0.21, 0.20, 0.0]])
    s[0, 4] = 0.18
    out = expert_cache_router(s, k=3, alpha=0.25, resident={4})
    assert out == [[0, 1, 4]]  # candidate 4 replaces one; the higher of the two missing (1) stays


def test_batch_top_score_set_serves_other_tokens():
    # token 0's top-score expert 2 is a candidate for token 1, even though nothing is resident
    s = torch.tensor([[0.1, 0.05, 0.8, 0.05], [0.5, 0.22, 0.19, 0.09]])
    out = expert_cache_router(s, k=2, alpha=0.25, resident=set())
    assert out[0] == [0, 2]
    assert out[1] == [0, 2]  # expert 1 (low-score, missing) replaced by expert 2, in C


def test_each_candidate_used_at_most_once_per_token():
    s = torch.tensor([[0.3, 0.26, 0.25, 0.19, 0.0]])
    s[0, 4] = 0.0
    out = expert_cache_router(s, k=3, alpha=0.4, resident={3})
    assert len(out[0]) == 3 and len(set(out[0])) == 3


def test_family_selection_overrides_plain_ranking():
    # a group-limited router chose {0, 3}; the best non-selected score (expert 1, 0.3) is S_{k+1}
    s = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    topk = torch.tensor([[0, 3]])
    assert expert_cache_router(s, k=2, alpha=0.0, resident=set(), topk=topk) == [[0, 3]]
    out = expert_cache_router(s, k=2, alpha=0.5, resident={1}, topk=topk)
    assert out == [[0, 1]]  # expert 3 (0.1 < 1.5*0.3) is low-score and missing; 1 is in (0.15, 0.3]


def test_router_rejects_bad_arguments():
    with pytest.raises(ValueError):
        expert_cache_router(torch.rand(2, 4), k=4, alpha=0.1, resident=set())
    with pytest.raises(ValueError):
        expert_cache_router(torch.rand(2, 4), k=2, alpha=-0.1, resident=set())


def test_router_property_k_experts_and_only_allowed_newcomers():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        T, E, k = 3, 16, 4
        s = torch.rand(T, E, generator=g).softmax(-1)
        resident = set(torch.randperm(E, generator=g)[:6].tolist())
        alpha = float(torch.rand(1, generator=g)) * 0.6
        out = expert_cache_router(s, k, alpha, resident)
        plain = expert_cache_router(s, k, 0.0, resident)
        top_union = set()
        for t in range(T):
            L = sorted(s[t].tolist(), reverse=True)[k]
            top_union |= {e for e in plain[t] if s[t, e] >= (1 + alpha) * L}
        for t in range(T):
            assert len(out[t]) == k and len(set(out[t])) == k
            for e in set(out[t]) - set(plain[t]):  # newcomers: resident or batch top-score, in the band
                assert e in resident or e in top_union
                L = sorted(s[t].tolist(), reverse=True)[k]
                assert (1 - alpha) * L < s[t, e] <= L


# ---- Alg. 2 ---------------------------------------------------------------------------------------------
def test_split_equal_costs_alternates_from_both_ends():
    assert split_load_cpu([9, 8, 7, 6], 1.0, 1.0) == ([9, 8], [7, 6])


def test_split_cheap_cpu_sends_more_to_cpu():
    load, cpu = split_load_cpu([5, 4, 3, 2, 1], c_load=3.0, c_cpu=1.0)
    assert load == [5, 4] and cpu == [3, 2, 1]


def test_split_cheap_load_loads_more():
    load, cpu = split_load_cpu([5, 4, 3, 2, 1], c_load=1.0, c_cpu=3.0)
    assert load == [5, 4, 3, 2] and cpu == [1]


def test_split_edge_cases():
    assert split_load_cpu([], 1.0, 1.0) == ([], [])
    assert split_load_cpu([7], 5.0, 0.1) == ([7], [])  # first expert always loaded (0 <= 0)
    with pytest.raises(ValueError):
        split_load_cpu([1], -1.0, 1.0)


def test_split_makespan_within_one_expert_of_optimal():
    # Alg. 2 is greedy: its max(T_load, T_cpu) is at most one expert's cost above the best split.
    for c_load, c_cpu in [(1, 1), (2, 1), (1, 3), (0.4, 1.7)]:
        ids = list(range(9, 0, -1))
        load, cpu = split_load_cpu(ids, c_load, c_cpu)
        assert sorted(load + cpu, reverse=True) == ids
        got = max(len(load) * c_load, len(cpu) * c_cpu)
        best = min(max(n * c_load, (len(ids) - n) * c_cpu) for n in range(1, len(ids) + 1))
        assert best - 1e-9 <= got <= best + max(c_load, c_cpu) + 1e-9



def reference_router(scores: torch.Tensor, k: int, alpha: float, resident: set, topk: torch.Tensor) -> list:
    """The module docstring's semantics, literally: each token's experts ranked once (the selection first, by
    score, then the rest by score; ties to the lower id), candidates scanned down that ranking."""
    out, ranked, bounds, top, low = [], [], [], [], []
    for row, chosen in zip(scores.tolist(), topk.tolist()):
        by_score = sorted(range(len(row)), key=lambda e: (-row[e], e))
        rk = [e for e in by_score if e in chosen] + [e for e in by_score if e not in chosen]
        ranked.append(rk)
        bounds.append(row[rk[k]])
        top.append([e for e in rk[:k] if row[e] >= (1 + alpha) * row[rk[k]]])
        low.append([e for e in rk[:k] if row[e] < (1 + alpha) * row[rk[k]]])
    available = set(resident).union(*top)
    for row, rk, L, tops, lows in zip(scores.tolist(), ranked, bounds, top, low):
        need = [e for e in lows if e not in available]
        cands = [e for e in rk[k:] if e in available and row[e] > (1 - alpha) * L][: len(need)]
        out.append(sorted(tops + [e for e in lows if e in available] + cands + need[: len(need) - len(cands)]))
    return out


def test_router_decides_as_its_literal_statement():
    """On random batches (ties in the scores included, and family selections that are not the k best) the router
    gives what the module docstring's rules, applied literally, give."""
    import random

    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    substituted = 0
    for _ in range(3000):
        T, E = rng.choice([1, 1, 2, 3, 5]), rng.choice([8, 16, 64])
        k = rng.randint(1, min(8, E - 1))
        logits = torch.randn(T, E, generator=gen) * rng.choice([0.5, 1.0, 3.0])
        if rng.random() < 0.3:
            logits = torch.round(logits * 2) / 2  # ties in the scores
        scores = torch.softmax(logits, -1)
        topk = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]  # the k best, ties to the lower id
        own = rng.random() < 0.9  # else a selection that is not the k best (group-limited routing)
        if not own:
            topk = torch.stack([torch.randperm(E, generator=gen)[:k] for _ in range(T)])
        resident = set(rng.sample(range(E), rng.randint(0, E)))
        alpha = rng.choice([0.1, 0.25, 0.35, 0.9])
        want = reference_router(scores, k, alpha, resident, topk)
        assert expert_cache_router(scores, k, alpha, resident, topk=topk) == want
        if own:
            assert expert_cache_router(scores, k, alpha, resident) == want  # the router's own top-k
        substituted += want != [sorted(row) for row in topk.tolist()]
    assert substituted > 500  # substitution was exercised, not only the unchanged case


def test_compiled_plan_places_and_orders_stand_ins_as_stated():
    """`route_and_place` (what SMoE's plan runs) on random batches: what each token computes is the literal router's,
    a token's replaced experts (in top-k order) get its stand-ins best first (score, then lower id), every other routed
    expert is a HIT where resident and a LOAD where not, and the computed union splits into resident and missing;
    where nothing is missing, the hits are touched in the policy's clock as `CachingPolicy._touch_layer` would, else
    nothing is."""
    import random

    import numpy as np

    from smoe.plan import _HIT, _LOAD, _SUB
    from smoe.smoe_kernels import route_and_place

    rng = random.Random(1)
    gen = torch.Generator().manual_seed(1)
    stood_in = loads = touched = 0
    for _ in range(2000):
        T, E = rng.choice([1, 2, 3]), rng.choice([16, 64])
        k = rng.randint(1, 8)
        logits = torch.randn(T, E, generator=gen) * rng.choice([1.0, 3.0])
        if rng.random() < 0.3:
            logits = torch.round(logits * 2) / 2  # ties
        scores = torch.softmax(logits, -1)
        topk = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        resident = set(rng.sample(range(E), rng.randint(0, E)))
        alpha = rng.choice([0.0, 0.25, 0.9])
        mask = np.zeros(E, dtype=bool)
        mask[list(resident)] = True
        sel = topk.numpy().astype(np.int64)
        clock = np.arange(3 * E, dtype=np.int64).reshape(3, E)  # [L,E] a policy's recency
        row, tick = rng.randrange(3), rng.randint(3 * E, 10**6)
        actions, standins, hits, missing, substituted = route_and_place(scores.numpy(), sel, mask, alpha, True,
                                                                        clock, row, tick)
        want = reference_router(scores, k, alpha, resident, topk) if alpha > 0 else [sorted(r) for r in sel.tolist()]
        rows = scores.tolist()
        for t in range(T):
            chosen = sel[t].tolist()
            extra = sorted(set(want[t]) - set(chosen), key=lambda e: (-rows[t][e], e))  # stand-ins, best first
            replaced = [j for j, e in enumerate(chosen) if e not in want[t]]
            assert standins[t].tolist() == [extra[replaced.index(j)] if j in replaced else -1 for j in range(k)]
            assert actions[t].tolist() == [_SUB if j in replaced else _HIT if e in resident else _LOAD
                                           for j, e in enumerate(chosen)]
            stood_in += len(replaced)
        union = set().union(*want)
        assert hits.tolist() == sorted(union & resident)
        assert missing.tolist() == sorted(union - resident, key=lambda e: (-max(r[e] for r in rows), e))  # best first
        assert substituted == any(len(set(w) - set(c)) for w, c in zip(want, sel.tolist()))
        loads += len(missing)
        expected = np.arange(3 * E, dtype=np.int64).reshape(3, E)
        if not len(missing):
            expected[row, hits] = tick + np.arange(len(hits))  # ascending ids, one tick each
            touched += len(hits)
        np.testing.assert_array_equal(clock, expected)
        # without substitution every token computes what it routed to
        actions0, standins0, hits0, missing0, sub0 = route_and_place(scores.numpy(), sel, mask, alpha, False,
                                                                     clock, -1, 0)
        np.testing.assert_array_equal(clock, expected)  # row -1: no clock, nothing touched
        assert not sub0 and (standins0 == -1).all() and sorted(hits0.tolist() + missing0.tolist()) == sorted(
            set(sel.ravel().tolist()))
    assert stood_in > 500 and loads > 500 and touched > 500  # every branch exercised


def test_compiled_prefetch_wish_list_follows_the_threshold_in_the_scores_precision():
    """`predicted_top`: the experts scoring at least max(S_k, (1+alpha)*S_{k+1}) for some token (the product in
    float32), not resident, by best score over the batch, ties to the lower id; against plain Python on random and
    tied scores."""
    import random

    import numpy as np

    from smoe.smoe_kernels import predicted_top

    rng = random.Random(2)
    found = 0
    for _ in range(2000):
        T, E, k = rng.choice([1, 2, 3]), rng.choice([16, 64]), rng.randint(1, 8)
        scores = np.random.default_rng(rng.randrange(1 << 30)).random((T, E), dtype=np.float32)
        if rng.random() < 0.4:
            scores = np.round(scores * 8) / 8  # ties
        scores = scores.astype(np.float32)
        resident = np.array([rng.random() < 0.4 for _ in range(E)])
        factor = np.float32(1 + rng.choice([0.0, 0.25, 0.5]))
        top = set()
        for row in scores.tolist():
            ranked = sorted(row, reverse=True)
            bound = max(ranked[k - 1], float(factor * np.float32(ranked[k])))
            top.update(e for e, v in enumerate(row) if v >= bound and not resident[e])
        want = sorted(top, key=lambda e: (-max(r[e] for r in scores.tolist()), e))
        out, work = np.full(E, -1, dtype=np.int64), np.full(2 * E + k + 1, np.nan, dtype=np.float32)  # stale buffers
        n = predicted_top(scores, k, factor, resident, out, work)
        assert out[:n].tolist() == want
        found += len(want)
    assert found > 1000


def test_balancing_prices_a_load_at_the_link_the_run_emulates():
    """SMoE's balancing and HybriMoE's scheduling price a load over the run's emulated link unless `pcie_gbps` is
    set: four missing experts split 2/2 at the default 25 GB/s (a load 4e-8 s, a CPU expert 5e-8), 1 load and 3 on
    the CPU over a 5 GB/s link (a load 2e-7 s); an explicit pcie_gbps=25 decides as on the machine's own link."""
    from smoe.balance import PCIE_GBPS, load_seconds
    from smoe.errors import PolicyParamError
    from smoe.plan import Action, CacheView, LayerView, ModelInfo, check_plan
    from smoe.policy import make_policy
    from smoe_test_support import FakePool

    own = ModelInfo(moe_layers=(0,), num_experts=8, top_k=4, expert_bytes=1000, model_type="test")
    slow = ModelInfo(**{**own.__dict__, "link_gbps": 5.0})
    assert load_seconds(own, None) == 1000 / (PCIE_GBPS * 1e9)
    assert load_seconds(slow, None) == 1000 / 5e9 and load_seconds(slow, 50.0) == 1000 / 50e9

    def split(name, info, **params):
        scores = np.array([[0.4, 0.3, 0.2, 0.1, 0, 0, 0, 0]], dtype=np.float32)
        v = LayerView(layer=0, phase="decode", step=1, scores_np=scores, topk_np=np.array([[0, 1, 2, 3]]),
                      cache=CacheView(FakePool(capacity=8)), model=info)
        policy = make_policy(name, **params)
        policy.setup(info, 8)
        ex = check_plan(policy.plan(v), v, name)
        return sorted(ex.loads), sorted(e for e, a in ex.where.items() if a == Action.CPU)

    for name in ("smoe-ce-cr-ba", "hybrimoe"):
        assert [len(s) for s in split(name, own)] == [2, 2], name
        assert [len(s) for s in split(name, slow)] == [1, 3], name
        assert split(name, slow, pcie_gbps=25.0) == split(name, own), name
    for bad in (dict(pcie_gbps=0.0), dict(cpu_gbps=-1.0)):
        for name in ("smoe", "hybrimoe"):
            with pytest.raises(PolicyParamError, match="pcie_gbps > 0 or None"):
                make_policy(name, **bad)
