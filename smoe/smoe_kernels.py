"""SMoE's per-layer decisions as compiled loops (numba): the expert-cache router with the placement of what it
computes, the prefetch's predicted top-score experts and their placement, the victim search of score-aware eviction,
and the windowed scores' update.

Where it sits: `smoe.policies.smoe` calls these from `plan`, `prefetch`, `victims` and `observe` once per MoE layer of
every forward pass (the placement only when the prefetch has a wish list, `victims` only when a plan must free a slot),
and `smoe.router.expert_cache_router` wraps the first. They are the router's rules (stated in `smoe.router`), the
prefetch threshold, the eviction keys (`SMoE.eviction_rank`) and Eq. 3's window written as plain loops over small
arrays, compiled when this module is imported (and cached on disk), because in a decode layer interpreted Python pays
for every operation on a core whose caches the model's work has cooled (README, planning share): a few hundred
microseconds a layer against the 5% of TPOT the issue allows. They decide as the interpreted code they replaced did, run
for run (`benchmarks/decisions_vs_commit.py --rev f290395`, `--rev 750fcf0` for the victim search, `--rev defc54a` for
the wish list without its sort and the compiled `observe`, `--rev 66db7a6` for the router's touch of an all-resident
layer, `--rev c29fb2e` for the prefetch's placement); `tests/test_router_balance.py` checks the first two against the
rules written out literally in plain Python (and the router's touch against `CachingPolicy._touch_layer`),
`tests/test_smoe_policy.py` the victim search against `CachingPolicy.victims` over the numpy keys, the prefetch's
placement against `CachingPolicy.prefetch_plan` and the window's update against numpy's mean.

Float semantics follow the interpreted rules exactly: scores are float32; the router's bounds are computed in
float64 (as Python floats), the prefetch threshold's product in the scores' own precision, a pass's mean scores as
float32 sums of its rows in order, the windowed means as float64 sums of the ring's slots in order.
"""
from __future__ import annotations

import numba
import numpy as np

from .plan import _HIT as HIT
from .plan import _LOAD as LOAD
from .plan import _SUB as SUB


@numba.njit(cache=True)
def _best(scores_t, eligible):
    """The eligible expert with the highest score, ties to the lower id; -1 if none. scores_t [E], eligible [E] bool."""
    b = -1
    for e in range(scores_t.shape[0]):
        if eligible[e] and (b < 0 or scores_t[e] > scores_t[b]):
            b = e
    return b


@numba.njit(cache=True)
def _insert_best_first(scores, e, out, best, n):
    """Insert expert e into out[:n] (kept by descending best score over the batch, best[:n] those scores; equal scores
    keep their order, so ids inserted ascending stay ascending among ties). scores [T,E]."""
    v = scores[0, e]
    for t in range(1, scores.shape[0]):
        if scores[t, e] > v:
            v = scores[t, e]
    p = n
    while p > 0 and best[p - 1] < v:
        best[p] = best[p - 1]
        out[p] = out[p - 1]
        p -= 1
    best[p] = v
    out[p] = e


# Signatures are given, so the kernels compile (or load from numba's disk cache) when this module is imported, never
# inside a timed layer; the routing inputs match arrays of any layout (a router's top-k may be a strided view on the
# CPU), the victim search only the policy's own C-contiguous state.
@numba.njit("Tuple((int8[:, ::1], int64[:, ::1], int64[::1], int64[::1], boolean))"
            "(float32[:, :], int64[:, :], boolean[:], float64, boolean, int64[:, ::1], int64, int64)", cache=True)
def route_and_place(scores, sel, resident, alpha, substitute, recency, row, tick):
    """One layer of SMoE's plan: the expert-cache router (paper Alg. 1, `smoe.router` states its rules) and where
    each computed expert comes from.

    scores [T,E] float32, sel [T,K] int64 (the family router's choice), resident [E] bool, alpha >= 0; `substitute`
    false: every token computes what it routed to. recency [L,E] int64, row, tick: the caching policy's clock (row < 0:
    none). Where every expert the batch computes is resident, the layer's plan only touches them, which is done here:
    hits[i] of row `row` gets tick + i, as `CachingPolicy._touch_layer` would (the caller advances its clock by
    len(hits)); with anything missing, nothing is touched (the caller's `cache_plan` touches and inserts).
    -> actions [T,K] int8: HIT (the routed expert is computed and resident), LOAD (computed and missing; the caller
       may run some on the CPU), SUB (replaced by a stand-in);
       standins [T,K] int64: the stand-in where SUB, else -1, given to a token's replaced experts in top-k order,
       best stand-in first;
       hits [h] int64: the experts the batch computes (after substitution) that are resident, ascending;
       missing [m] int64: those that are not, by descending best score over the batch, ties to the lower id (the order
       in which SMoE's balancing takes them); substituted: whether any token has a stand-in.
    """
    T, E = scores.shape
    K = sel.shape[1]
    actions = np.full((T, K), HIT, np.int8)
    standins = np.full((T, K), -1, np.int64)
    computed = np.zeros(E, np.bool_)  # [E] the union of what the tokens compute
    substituted = False
    if substitute and alpha > 0:
        chosen = np.zeros((T, E), np.bool_)
        for t in range(T):
            for j in range(K):
                chosen[t, sel[t, j]] = True
        bound = np.empty(T)  # [T] L_t = S_{k+1}: the best score outside the selection (float64, as a Python float)
        for t in range(T):
            best = -np.inf
            for e in range(E):
                if not chosen[t, e] and scores[t, e] > best:
                    best = np.float64(scores[t, e])
            bound[t] = best
        high, low = 1.0 + alpha, 1.0 - alpha
        available = resident.copy()  # resident, or top-score for some token of the batch (C)
        for t in range(T):
            top = high * bound[t]
            for j in range(K):
                if scores[t, sel[t, j]] >= top:
                    available[sel[t, j]] = True
        for t in range(T):
            need = 0  # low-score experts that are neither resident nor in C
            for j in range(K):
                if not available[sel[t, j]]:
                    need += 1
            if need == 0:
                for j in range(K):
                    computed[sel[t, j]] = True
                continue
            floor = low * bound[t]
            eligible = np.zeros(E, np.bool_)  # candidates: available, outside the selection, above (1-alpha)*L
            for e in range(E):
                eligible[e] = available[e] and not chosen[t, e] and scores[t, e] > floor
            cands = np.empty(need, np.int64)  # best first
            nc = 0
            while nc < need:
                b = _best(scores[t], eligible)
                if b < 0:
                    break
                eligible[b] = False
                cands[nc] = b
                nc += 1
            needed = np.zeros(E, np.bool_)  # the low-score experts to replace
            for j in range(K):
                if not available[sel[t, j]]:
                    needed[sel[t, j]] = True
            for _ in range(need - nc):  # where candidates run short, the best needed experts keep their places
                b = _best(scores[t], needed)
                needed[b] = False
            s = 0
            for j in range(K):
                e = sel[t, j]
                if needed[e]:  # replaced
                    actions[t, j] = SUB
                    standins[t, j] = cands[s]
                    computed[cands[s]] = True
                    s += 1
                    substituted = True
                else:
                    computed[e] = True
    else:
        for t in range(T):
            for j in range(K):
                computed[sel[t, j]] = True
    h = m = 0
    for e in range(E):
        if computed[e]:
            if resident[e]:
                h += 1
            else:
                m += 1
    hits = np.empty(h, np.int64)
    missing = np.empty(m, np.int64)
    best = np.empty(m, scores.dtype)  # [m] each missing expert's best score over the batch
    h = m = 0
    for e in range(E):  # ascending ids; a missing one is inserted by descending best score (ties keep the lower id first)
        if computed[e]:
            if resident[e]:
                hits[h] = e
                h += 1
            else:
                _insert_best_first(scores, e, missing, best, m)
                m += 1
    for t in range(T):
        for j in range(K):
            if actions[t, j] != SUB and not resident[sel[t, j]]:
                actions[t, j] = LOAD
    if m == 0 and row >= 0:
        for i in range(h):
            recency[row, hits[i]] = tick + i
    return actions, standins, hits, missing, substituted


@numba.njit("int64(float32[:, :], int64, float32, boolean[:], int64[::1], float32[::1])", cache=True)
def predicted_top(scores, k, factor, resident, want, work):
    """The prefetch's wish list: experts that are top-score for some token of the predicted scores and not resident,
    best first.

    scores [T,E] (float32), k the family's top-k (k < E), factor 1 + alpha in the scores' precision, resident [E] bool
    (the next layer's). A token's top-score experts score at least max(S_k, factor * S_{k+1}) (the product in the
    scores' precision); the list is ordered by each expert's best predicted score over the batch, ties to the lower id.
    want [E] int64 and work [2E + k + 1] float32 are the caller's buffers, kept across layers: nothing is allocated
    and no array is returned, and S_k, S_{k+1} come from a running top k+1 rather than a sort, because the kernel runs
    once per decode layer on a core the model's work has cooled, where an allocation, an array handed back to Python
    and the sort's code each cost more than the work (README, planning share).
    -> n: want[:n] is the list."""
    T, E = scores.shape
    wanted = work[:E]  # [E] 1 where some token's top-score expert is not resident
    best = work[E:2 * E]  # [n] each listed expert's best score over the batch
    top = work[2 * E:2 * E + k + 1]  # [k+1] a token's largest scores so far, descending
    wanted[:] = 0
    for t in range(T):
        m = 0
        for e in range(E):
            v = scores[t, e]
            if m <= k or v > top[k]:
                p = min(m, k)
                while p > 0 and top[p - 1] < v:
                    top[p] = top[p - 1]
                    p -= 1
                top[p] = v
                m = min(m + 1, k + 1)
        bound = max(np.float64(top[k - 1]), np.float64(factor * top[k]))
        for e in range(E):
            if scores[t, e] >= bound and not resident[e]:
                wanted[e] = 1
    n = 0
    for e in range(E):  # ascending ids, inserted by descending best score (stable: ties keep the lower id first)
        if wanted[e]:
            _insert_best_first(scores, e, want, best, n)
            n += 1
    return n


@numba.njit(cache=True)
def _candidates(in_cache, allowed, ring, passes):
    """The cached experts where `allowed` ([L,E] bool each), with their windowed means: the ring's slots summed in order
    in float64 over min(passes, W), 0 for a layer never seen. -> (cand [n] int64 flat indices, ascending; mean [n])."""
    L, E = in_cache.shape
    W = ring.shape[1]
    n = 0
    for r in range(L):
        for e in range(E):
            if in_cache[r, e] and allowed[r, e]:
                n += 1
    cand = np.empty(n, np.int64)
    mean = np.zeros(n)
    i = 0
    for r in range(L):
        seen = min(passes[r], W)
        for e in range(E):
            if in_cache[r, e] and allowed[r, e]:
                cand[i] = r * E + e
                if seen > 0:
                    s = 0.0
                    for j in range(W):
                        s += np.float64(ring[r, j, e])
                    mean[i] = s / seen
                i += 1
    return cand, mean


@numba.njit(cache=True)
def _next_victim(cand, mean, pre, recency, taken):
    """The best victim among cand [n] not yet `taken` (marked taken now), by the keys of `smoe_victims` (pre [L*E]
    bool: brought by a prefetch, not used since; empty: no candidate is); -1: none left. -> an index into cand."""
    E = recency.shape[1]
    b = -1
    for i in range(cand.shape[0]):
        if taken[i]:
            continue
        if b < 0:
            b = i
            continue
        f, g = cand[i], cand[b]
        if pre.shape[0] and pre[f] != pre[g]:
            better = not pre[f]
        elif mean[i] != mean[b]:
            better = mean[i] < mean[b]
        else:
            better = recency[f // E, f % E] < recency[g // E, g % E]
        if better:
            b = i
    if b >= 0:
        taken[b] = True
    return b


@numba.njit("int64[::1](boolean[:, ::1], boolean[:, ::1], int64[::1], float32[:, :, ::1], int64[::1], int64[:, ::1], "
            "int64)", cache=True)
def smoe_victims(in_cache, allowed, prefetched, ring, passes, recency, wanted):
    """SMoE's score-aware eviction (`SMoE.eviction_rank` states it in numpy): the cached experts where `allowed`,
    best victim first, at most `wanted` of them.

    in_cache, allowed [L,E] bool; prefetched [p] int64: flat indices (row * E + expert) of experts brought by a prefetch
    and not used since; ring [L,W,E] float32: each layer's last W per-pass mean scores (W = 0: no window, LRU order);
    passes [L] int64: passes each ring has seen; recency [L,E] int64.
    The keys, most significant first: prefetched (false first), the windowed mean (the ring's slots summed in order in
    float64, over min(passes, W); 0 for a layer never seen), recency; ties to the lower flat index.
    -> flat [m] int64, m = min(wanted, candidates)."""
    L, E = in_cache.shape
    pre = np.zeros(L * E, np.bool_)
    for f in prefetched:
        pre[f] = True
    cand, mean = _candidates(in_cache, allowed, ring, passes)
    m = min(wanted, cand.shape[0])
    out = np.empty(m, np.int64)
    taken = np.zeros(cand.shape[0], np.bool_)
    for k in range(m):
        out[k] = cand[_next_victim(cand, mean, pre, recency, taken)]
    return out


@numba.njit("UniTuple(int64, 2)(int64[::1], int64, int64, int64, int64, boolean[:, ::1], int64[::1], "
            "float32[:, :, ::1], int64[::1], int64[:, ::1], int64[:, ::1], int64, int64[::1], int64[::1])", cache=True)
def place_prefetch(want, n, nxt, cur, free, in_cache, prefetched, ring, passes, recency, born, tick, loads, evicted):
    """SMoE's prefetch placement: `CachingPolicy.prefetch_plan` of the wish list want[:n] (best first) with the
    prefetched experts not yet used protected and `smoe_victims`' order, in one call (a prefetch runs in a fifth of the
    decode layers, where the interpreted placement cost 70-80 us on the cooled core).

    want [>=n] int64 experts of row `nxt`; cur: the row of the layer being computed (never a victim); free: free slots;
    in_cache [L,E] bool, ring, passes, recency [L,E] and born [L,E] int64, tick: the policy's state, updated as its
    `_insert` and `_drop` would (the i-th load gets recency = born = tick + i); prefetched [p] flat indices: brought
    by a prefetch and not used since (never victims). Each wanted expert not cached takes a free slot, else the best
    victim's: a cached expert outside row `cur`, `prefetched` and this prefetch's loads, by windowed mean, then
    recency, then flat index, the candidates fixed at the first eviction (as `prefetch_plan` asks `victims` once); it
    stops when none is left. loads, evicted [>=n] int64: the caller's buffers.
    -> (l, v): loads[:l] the experts loaded, in order; evicted[:v] the flat victims, in order (load l - v + i takes the
    slot of victim i)."""
    L, E = in_cache.shape
    no_pre = np.zeros(0, np.bool_)  # the prefetched experts are never candidates here: their key ranks nothing
    nl = nv = 0
    cand = np.empty(0, np.int64)
    mean = np.empty(0)
    taken = np.empty(0, np.bool_)
    searched = False
    for i in range(n):
        e = want[i]
        if in_cache[nxt, e]:
            continue
        if free > 0:
            free -= 1
        else:
            if not searched:
                allowed = np.ones((L, E), np.bool_)
                allowed[cur] = False
                for f in prefetched:
                    allowed[f // E, f % E] = False
                for j in range(nl):
                    allowed[nxt, loads[j]] = False
                cand, mean = _candidates(in_cache, allowed, ring, passes)
                taken = np.zeros(cand.shape[0], np.bool_)
                searched = True
            b = _next_victim(cand, mean, no_pre, recency, taken)
            if b < 0:
                break
            f = cand[b]
            in_cache[f // E, f % E] = False
            evicted[nv] = f
            nv += 1
        in_cache[nxt, e] = True
        recency[nxt, e] = tick + nl
        born[nxt, e] = tick + nl
        loads[nl] = e
        nl += 1
    return nl, nv


@numba.njit("int64(int64[::1], int64[::1], int64, int64, boolean[:, ::1], int64[::1], "
            "float32[:, :, ::1], int64[::1], int64[:, ::1], int64[:, ::1], int64, int64[::1])", cache=True)
def place_loads(hits, loads, row, free, in_cache, prefetched, ring, passes, recency, born, tick, dropped):
    """SMoE's room for a layer's loads: `CachingPolicy.cache_plan` of hits and loads (each ascending) with
    `smoe_victims`' order, in one call (a layer with a miss, a quarter of the decode layers at batch 3, ran the
    interpreted one at 80-120 us on the cooled core).

    row: the layer's row; free: slots not held by the policy's cached set; in_cache [L,E] bool, ring, passes, recency and
    born [L,E] int64, tick: the policy's state, updated as `_touch_layer`, `_insert` and `_drop` would (hit i gets
    recency tick + i, load j recency = born = tick + len(hits) + j); prefetched [p] flat indices (row * E + expert):
    brought by a prefetch and not used since (ranked first to stay). Each load takes a free slot, else the best victim's:
    a cached expert outside the layer's hits and loads, the candidates fixed at the first eviction (as `cache_plan` asks
    `victims` once); when none is left, the best of the layer's own experts placed so far, whose slot is reused after it
    is computed (`discard`). dropped [>=len(loads)] int64: the caller's buffer.
    -> n: dropped[:n] the experts that gave up their slots, in order (load len(loads) - n + i takes the slot of drop i),
    each a flat index f if evicted, -1 - f if one of the layer's own (discarded); -1: no expert left to give up a slot
    (a cache of no slots)."""
    L, E = in_cache.shape
    h = hits.shape[0]
    for i in range(h):
        recency[row, hits[i]] = tick + i
    tick += h
    n = 0
    pre = np.empty(0, np.bool_)
    cand = np.empty(0, np.int64)
    mean = np.empty(0)
    taken = np.empty(0, np.bool_)
    searched = False
    for j in range(loads.shape[0]):
        if free > 0:
            free -= 1
        else:
            if not searched:
                pre = np.zeros(L * E, np.bool_)
                for f in prefetched:
                    pre[f] = True
                allowed = np.ones((L, E), np.bool_)
                for i in range(h):
                    allowed[row, hits[i]] = False
                for i in range(loads.shape[0]):
                    allowed[row, loads[i]] = False
                cand, mean = _candidates(in_cache, allowed, ring, passes)
                taken = np.zeros(cand.shape[0], np.bool_)
                searched = True
            b = _next_victim(cand, mean, pre, recency, taken)
            if b >= 0:
                f = cand[b]
                dropped[n] = f
            else:  # reuse one of the layer's own: its hits and the loads placed so far
                own = np.zeros((L, E), np.bool_)
                for i in range(h):
                    own[row, hits[i]] = True
                for i in range(j):
                    own[row, loads[i]] = True
                c2, m2 = _candidates(in_cache, own, ring, passes)
                b = _next_victim(c2, m2, pre, recency, np.zeros(c2.shape[0], np.bool_))
                if b < 0:
                    return -1
                f = c2[b]
                dropped[n] = -1 - f
            n += 1
            in_cache[f // E, f % E] = False
        e = loads[j]
        in_cache[row, e] = True
        recency[row, e] = tick + j
        born[row, e] = tick + j
    return n


@numba.njit("void(float32[:, :, ::1], int64[::1], int64, float32[:, :])", cache=True)
def observe_ring(ring, passes, row, scores):
    """Eq. 3's window, one forward pass of one layer: the pass's mean score per expert into the next slot of the
    layer's ring, and one more pass counted.

    ring [L,W,E] float32 and passes [L] int64: `SMoE`'s state (slot passes[row] % W is overwritten); scores [T,E]
    float32: the router's scores of the pass. The mean is numpy's `np.add.reduce(scores, axis=0) / T`: the rows summed
    in order in float32, then divided in float32 (at T = 1 the row itself)."""
    T, E = scores.shape
    slot = ring[row, passes[row] % ring.shape[1]]  # [E] a view
    for e in range(E):
        slot[e] = scores[0, e]
    for t in range(1, T):
        for e in range(E):
            slot[e] += scores[t, e]
    if T > 1:
        n = np.float32(T)
        for e in range(E):
            slot[e] /= n
    passes[row] += 1
