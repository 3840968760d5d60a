"""The runtime's check of a plan's per-(token, expert) actions, as one compiled loop (numba).

Where it sits: `smoe.plan.check_plan` calls `walk_plan` for every MoE layer whose plan is more than "all HIT" and turns
its packed output into the engine's `ExecPlan` and its error codes into `PolicyError` messages. The walk visits every
(token, routed expert) in HF's order (by top-k rank, then token) and stops at the first broken rule, so the error a
policy sees names the same pair as a plain loop would; `tests/test_plan_checks.py` checks it against the rules written
out in Python. It is compiled (on import, from numba's disk cache) for the reason `smoe.smoe_kernels` gives: in a
decode layer, on a core the model's work has cooled, each interpreted operation costs several times its warm price.
For the same reason it hands back one packed int64 array (and the changed tokens' mask) rather than a dozen arrays: a
compiled function's every returned array costs a boxed numpy object, and the caller one `tolist` for all.
"""
from __future__ import annotations

import numba
import numpy as np

HIT, LOAD, CPU, SUB, SKIP = range(5)  # `smoe.plan.Action`'s codes (plan.py checks they agree)

# error codes of `walk_plan` (0: none); `smoe.plan` words them
NO_ACTION, BAD_STANDIN, HIT_MISSING, RESIDENT_NOT_HIT, TWO_ACTIONS, TWICE, UNSERVED_STANDIN = range(1, 8)


# header of `walk_plan`'s packed output: its first HEAD entries, then the variable-length parts in the order listed
ERR, AT_T, AT_J, AT_X, SUBS, SKIPS, N_EXPERTS, N_ROWS, N_CHANGED, N_LOADS = range(10)
HEAD = 10


_WALK_SIG = "Tuple((int64[::1], boolean[:, ::1]))({}[:, :], int64[:, :], int64[:, :], boolean[:], boolean[:], int64)"


@numba.njit([_WALK_SIG.format("int8"), _WALK_SIG.format("int64")], cache=True)  # the actions' codes: int8 or int64
def walk_plan(acts, stands, topk, resident, forced, E):
    """acts [T,K] Action codes, stands [T,K] stand-ins (read where SUBSTITUTE; -1 or an empty [0,0]: none given), topk
    [T,K] the router's experts, resident [>=E] bool, forced [T] bool: tokens whose scores the plan scales (counted as
    changed; empty: none), E experts.
    -> (out, changed_mask). out int64, packed (one array to hand back, not a dozen):
       out[:HEAD]: ERR (the first broken rule, `NO_ACTION`...; 0: none) at token AT_T's rank-AT_J pair with AT_X the
       stand-in (BAD_STANDIN; UNSERVED_STANDIN, whose AT_J is -1), the action met first (TWO_ACTIONS) or the expert
       (TWICE); SUBS, SKIPS; N_EXPERTS m, N_ROWS n, N_CHANGED c, N_LOADS l, the lengths of what follows:
       experts [m] the computed experts, ascending; where [m] each one's HIT, LOAD or CPU (a resident stand-in is a
       HIT); starts [m+1] and rows [n]: the tokens that compute experts[i] are rows[starts[i]:starts[i+1]], in HF's
       order; changed [c] ascending: the tokens whose computed set is not their routed set, or that are forced;
       loads [l] the LOAD experts, ascending.
       changed_mask [c,E] bool: the experts each changed token computes. A plan that fails gives the header only."""
    T, K = acts.shape
    given = stands.shape[0] > 0
    where = np.full(E, -1, np.int8)
    computed = np.zeros((T, E), np.bool_)
    count = np.zeros(E, np.int64)  # tokens per computed expert
    pair_e = np.empty(T * K, np.int64)  # the computed (expert, token) pairs in HF's order
    pair_t = np.empty(T * K, np.int64)
    borrowed_t = np.empty(T * K, np.int64)  # stand-ins that are not resident: another token must load or CPU-run them
    borrowed_s = np.empty(T * K, np.int64)
    head = np.zeros(HEAD, np.int64)  # the output of a plan that fails
    nothing = np.zeros((0, E), np.bool_)
    n = nb = subs = skips = 0
    for j in range(K):
        for t in range(T):
            a, e = acts[t, j], topk[t, j]
            if a > CPU:
                if a > SKIP:
                    head[ERR], head[AT_T], head[AT_J], head[AT_X] = NO_ACTION, t, j, -1
                    return head, nothing
                if a == SKIP:
                    skips += 1
                    continue
                s = stands[t, j] if given else -1
                if not 0 <= s < E:
                    head[ERR], head[AT_T], head[AT_J], head[AT_X] = BAD_STANDIN, t, j, s
                    return head, nothing
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
                    head[ERR], head[AT_T], head[AT_J], head[AT_X] = NO_ACTION, t, j, -1
                    return head, nothing
                if (a == HIT) != resident[e]:
                    err = HIT_MISSING if a == HIT else RESIDENT_NOT_HIT
                    head[ERR], head[AT_T], head[AT_J], head[AT_X] = err, t, j, -1
                    return head, nothing
                if where[e] < 0:
                    where[e] = a
                elif where[e] != a:
                    head[ERR], head[AT_T], head[AT_J], head[AT_X] = TWO_ACTIONS, t, j, where[e]
                    return head, nothing
            if computed[t, e]:
                head[ERR], head[AT_T], head[AT_J], head[AT_X] = TWICE, t, j, e
                return head, nothing
            computed[t, e] = True
            count[e] += 1
            pair_e[n] = e
            pair_t[n] = t
            n += 1
    for i in range(nb):
        if where[borrowed_s[i]] < 0:
            head[ERR], head[AT_T], head[AT_J], head[AT_X] = UNSERVED_STANDIN, borrowed_t[i], -1, borrowed_s[i]
            return head, nothing
    changed = np.zeros(T, np.bool_)
    c = 0
    if subs or skips or forced.shape[0]:
        for t in range(T):
            if forced.shape[0] and forced[t]:
                changed[t] = True
            else:
                routed = np.zeros(E, np.bool_)
                for j in range(K):
                    routed[topk[t, j]] = True
                for e in range(E):
                    if computed[t, e] != routed[e]:
                        changed[t] = True
                        break
            if changed[t]:
                c += 1
    m = nl = 0
    for e in range(E):
        if count[e]:
            m += 1
            if where[e] == LOAD:
                nl += 1
    out = np.empty(HEAD + 3 * m + 1 + n + c + nl, np.int64)
    out[ERR], out[AT_T], out[AT_J], out[AT_X] = 0, -1, -1, -1
    out[SUBS], out[SKIPS], out[N_EXPERTS], out[N_ROWS], out[N_CHANGED], out[N_LOADS] = subs, skips, m, n, c, nl
    at_e, at_w, at_s = HEAD, HEAD + m, HEAD + 2 * m  # where experts, their codes and their starts go
    at_r = at_s + m + 1
    at_c = at_r + n
    at_l = at_c + c
    slot = np.empty(E, np.int64)  # expert -> next free place among the rows
    i = p = 0
    for e in range(E):
        if count[e]:
            out[at_e + i] = e
            out[at_w + i] = where[e]
            out[at_s + i] = p
            slot[e] = p
            p += count[e]
            if where[e] == LOAD:
                out[at_l] = e
                at_l += 1
            i += 1
    out[at_s + m] = p
    for i in range(n):
        e = pair_e[i]
        out[at_r + slot[e]] = pair_t[i]
        slot[e] += 1
    changed_mask = np.zeros((c, E), np.bool_)
    i = 0
    for t in range(T):
        if changed[t]:
            out[at_c + i] = t
            changed_mask[i] = computed[t]
            i += 1
    return out, changed_mask
