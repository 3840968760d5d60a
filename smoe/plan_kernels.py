"""The runtime's check of a plan's per-(token, expert) actions, as one compiled loop (numba).

Where it sits: `smoe.plan.check_plan` calls `walk_plan` for every MoE layer whose plan is more than "all HIT" and turns
its arrays into the engine's `ExecPlan` and its error codes into `PolicyError` messages. The walk visits every
(token, routed expert) in HF's order (by top-k rank, then token) and stops at the first broken rule, so the error a
policy sees names the same pair as a plain loop would; `tests/test_plan_checks.py` checks it against the rules written
out in Python. It is compiled (on import, from numba's disk cache) for the reason `smoe.smoe_kernels` gives: in a
decode layer, on a core the model's work has cooled, each interpreted operation costs several times its warm price.
"""
from __future__ import annotations

import numba
import numpy as np

HIT, LOAD, CPU, SUB, SKIP = range(5)  # `smoe.plan.Action`'s codes (plan.py checks they agree)

# error codes of `walk_plan` (0: none); `smoe.plan` words them
NO_ACTION, BAD_STANDIN, HIT_MISSING, RESIDENT_NOT_HIT, TWO_ACTIONS, TWICE, UNSERVED_STANDIN = range(1, 8)


@numba.njit("Tuple((int64, int64, int64, int64, int8[::1], int64[::1], int64[::1], int64[::1], boolean[:, ::1], "
            "boolean[::1], int64, int64))(int64[:, :], int64[:, :], int64[:, :], boolean[:], int64)", cache=True)
def walk_plan(acts, stands, topk, resident, E):
    """acts [T,K] Action codes, stands [T,K] stand-ins (read where SUBSTITUTE; -1: none given), topk [T,K] the router's
    experts, resident [>=E] bool, E experts.
    -> (error, t, j, x): the first broken rule (`NO_ACTION`...; 0: none) at token t's rank-j pair, with x the stand-in
       (BAD_STANDIN; UNSERVED_STANDIN, whose j is -1), the action met first (TWO_ACTIONS), the expert (TWICE);
       where [E] int8: each computed expert's HIT, LOAD or CPU (-1: not computed; a resident stand-in is a HIT);
       experts [m] ascending, starts [m+1], rows [n]: the tokens that compute experts[i] are rows[starts[i]:starts[i+1]]
       in HF's order; computed [T,E] bool; changed [T] bool: a token whose computed set is not its routed set;
       substitutions, skips."""
    T, K = acts.shape
    where = np.full(E, -1, np.int8)
    computed = np.zeros((T, E), np.bool_)
    count = np.zeros(E, np.int64)  # tokens per computed expert
    pair_e = np.empty(T * K, np.int64)  # the computed (expert, token) pairs in HF's order
    pair_t = np.empty(T * K, np.int64)
    borrowed_t = np.empty(T * K, np.int64)  # stand-ins that are not resident: another token must load or CPU-run them
    borrowed_s = np.empty(T * K, np.int64)
    none = np.empty(0, np.int64)  # the outputs of a plan that fails
    unchanged = np.zeros(T, np.bool_)
    n = nb = subs = skips = 0
    for j in range(K):
        for t in range(T):
            a, e = acts[t, j], topk[t, j]
            if a > CPU:
                if a > SKIP:
                    return NO_ACTION, t, j, -1, where, none, none, none, computed, unchanged, 0, 0
                if a == SKIP:
                    skips += 1
                    continue
                s = stands[t, j]
                if not 0 <= s < E:
                    return BAD_STANDIN, t, j, s, where, none, none, none, computed, unchanged, 0, 0
                if resident[s]:
                    if where[s] < 0:
                        where[s] = HIT
                else:
                    borrowed_t[nb] = t
                    borrowed_s[nb] = s
                    nb += 1
                subs += 1
                e = s
            else:
                if a < 0:
                    return NO_ACTION, t, j, -1, where, none, none, none, computed, unchanged, 0, 0
                if (a == HIT) != resident[e]:
                    err = HIT_MISSING if a == HIT else RESIDENT_NOT_HIT
                    return err, t, j, -1, where, none, none, none, computed, unchanged, 0, 0
                if where[e] < 0:
                    where[e] = a
                elif where[e] != a:
                    return TWO_ACTIONS, t, j, where[e], where, none, none, none, computed, unchanged, 0, 0
            if computed[t, e]:
                return TWICE, t, j, e, where, none, none, none, computed, unchanged, 0, 0
            computed[t, e] = True
            count[e] += 1
            pair_e[n] = e
            pair_t[n] = t
            n += 1
    for i in range(nb):
        if where[borrowed_s[i]] < 0:
            return UNSERVED_STANDIN, borrowed_t[i], -1, borrowed_s[i], where, none, none, none, computed, unchanged, 0, 0
    m = 0
    for e in range(E):
        if count[e]:
            m += 1
    experts = np.empty(m, np.int64)
    starts = np.empty(m + 1, np.int64)
    slot = np.empty(E, np.int64)  # expert -> next free place in rows
    i = p = 0
    for e in range(E):
        if count[e]:
            experts[i] = e
            starts[i] = p
            slot[e] = p
            p += count[e]
            i += 1
    starts[m] = p
    rows = np.empty(n, np.int64)
    for i in range(n):
        e = pair_e[i]
        rows[slot[e]] = pair_t[i]
        slot[e] += 1
    changed = np.zeros(T, np.bool_)
    if subs or skips:
        for t in range(T):
            routed = np.zeros(E, np.bool_)
            for j in range(K):
                routed[topk[t, j]] = True
            for e in range(E):
                if computed[t, e] != routed[e]:
                    changed[t] = True
                    break
    return 0, -1, -1, -1, where, experts, starts, rows, computed, changed, subs, skips
