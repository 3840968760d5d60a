"""SMoE's expert-cache router (paper Alg. 1, Eq. 1-2): substitute low-score experts that are not on the
device with resident experts of similar score.

Where it sits: a pure function the SMoE policies call from `plan`; it sees scores and a resident set, never a
device or a clock.

Semantics (per token t of one layer; scores [T,E] are the family router's probabilities):
  topk_t   the k highest scores (ties: lower id first), or the family router's own selection;
           L_t = the best score outside topk_t (S_{k+1}: the (k+1)-th highest where topk_t is the k best)
  top-score experts: members of topk_t with score >= (1+alpha)*L_t;  C = their union over the batch
  low-score experts: the rest of topk_t; one that is resident or in C is kept
  need_t   the other low-score experts, replaced by candidates: experts not in topk_t, resident or in C,
           with (1-alpha)*L_t < score <= L_t, highest score first (ties: lower id), each at most once per token
  if candidates run short, the highest-scoring members of need_t fill the remaining places (they will be
  loaded or run on the CPU), so every token still computes k experts; alpha = 0 returns topk_t unchanged.

Where the paper and its public code differ we follow the paper's equations: the candidate band includes L_t
itself (Eq. 2 writes score <= S_{k+1}; the code uses a strict bound), candidates are taken by score (the code
scans a Python set), and a low-score expert is one below (1+alpha)*L_t (v3's corrected threshold).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch


def expert_cache_router(
    scores: torch.Tensor, k: int, alpha: float, resident: Iterable[int], topk: torch.Tensor | None = None
) -> list[list[int]]:
    """scores [T,E] -> for each token, the sorted expert ids it computes (k of them).

    `topk` [T,K] optionally gives the family router's own selection where it is not simply the k highest
    scores (group-limited routing, DeepSeek-V3's bias-corrected choice); S_{k+1} is then the best score of a
    non-selected expert, which is what the paper defines it as.
    """
    T, E = scores.shape
    if not 0 < k < E:
        raise ValueError(f"k must be in 1..{E - 1}, got {k}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if topk is not None and topk.shape != (T, k):
        raise ValueError(f"topk must have shape {(T, k)} (tokens, k), got {tuple(topk.shape)}")
    values = scores.detach().float().cpu().numpy()  # [T,E]
    if topk is None:  # the k highest scores, ties to the lower id
        topk = torch.from_numpy(np.argsort(-values, axis=1, kind="stable")[:, :k])
    return route_rows(values.tolist(), topk.tolist(), alpha, resident)


def route_rows(rows: list[list[float]], sel: list[list[int]], alpha: float, resident: Iterable[int]) -> list[list[int]]:
    """`expert_cache_router` on rows already converted to Python lists (scores [T][E], selection [T][k]), for a
    caller that holds them anyway: plain Python per token, as numpy's per-call cost would dominate a decode batch.

    Runs for every decode layer, so the per-token work is kept to C-level list, set and sort calls: sorts take
    `row.__getitem__` as key with reverse=True (stable, so ties keep the ascending ids they were given), which
    is the order (-score, id) without a Python call per comparison."""
    if alpha == 0:
        return [sorted(chosen) for chosen in sel]
    high, low = 1 + alpha, 1 - alpha
    bounds = [_best_outside(row, chosen) for row, chosen in zip(rows, sel)]  # [T] L_t = S_{k+1}
    available = set(resident)  # resident, or top-score for some token of the batch (C)
    for row, chosen, L in zip(rows, sel, bounds):
        top = high * L
        available.update([e for e in chosen if row[e] >= top])
    out = []
    for row, chosen, L in zip(rows, sel, bounds):
        # top-score experts are in `available`, so what is missing is exactly the low-score experts to replace
        need = [e for e in chosen if e not in available]
        if not need:
            out.append(sorted(chosen))
            continue
        floor = low * L
        # candidates: resident or top-score elsewhere in the batch, outside the selection, above (1-alpha)*L
        # (never above L: L is the best score outside the selection)
        cands = [e for e in available if row[e] > floor and e not in chosen]
        cands = by_score(row, cands)[: len(need)]
        fill = by_score(row, need)[: len(need) - len(cands)]  # the highest-scoring needed experts keep their places
        kept = [e for e in chosen if e in available]  # top-score ones, and low-score ones resident or in C
        out.append(sorted(kept + cands + fill))
    return out


def _best_outside(row: list[float], chosen: list[int]) -> float:
    """The best score outside the selection: S_{k+1} where `chosen` is the k best."""
    rest = row.copy()
    for e in chosen:
        rest[e] = -math.inf
    return max(rest)


def by_score(row: list[float] | dict[int, float], experts: Iterable[int]) -> list[int]:
    """`experts` by descending score `row[e]`, ties to the lower id: the order of key (-row[e], e), as two
    C-level sorts (no Python call per comparison)."""
    experts = sorted(experts)
    experts.sort(key=row.__getitem__, reverse=True)  # stable under reverse=True: equal scores stay ascending
    return experts


def best_first(rows: list[list[float]], experts: Iterable[int]) -> list[int]:
    """`experts` by descending best score over the rows (scores [T][E]), ties to the lower id."""
    if len(rows) == 1:
        return by_score(rows[0], experts)
    best = {e: max(row[e] for row in rows) for e in experts}
    return by_score(best, experts)
