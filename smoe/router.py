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
    caller that holds them anyway: plain Python per token, as numpy's per-call cost would dominate a decode batch."""
    if alpha == 0:
        return [sorted(chosen) for chosen in sel]
    bounds, top, low = [], [], []
    for row, chosen in zip(rows, sel):
        rest = row.copy()
        for e in chosen:
            rest[e] = -math.inf
        L = max(rest)  # S_{k+1}: the best score outside the selection
        bounds.append(L)
        top.append([e for e in chosen if row[e] >= (1 + alpha) * L])
        low.append([e for e in chosen if row[e] < (1 + alpha) * L])
    available = set(resident).union(*top)
    out = []
    for row, chosen, L, tops, lows in zip(rows, sel, bounds, top, low):
        need = [e for e in lows if e not in available]
        if not need:
            out.append(sorted(chosen))
            continue
        by_score = lambda e: (-row[e], e)  # noqa: E731 (descending score, ties to the lower id)
        need.sort(key=by_score)
        floor = (1 - alpha) * L
        # candidates: resident or top-score elsewhere in the batch, outside the selection, above (1-alpha)*L
        chosen_c = sorted([e for e in available.difference(chosen) if row[e] > floor], key=by_score)[: len(need)]
        fill = need[: len(need) - len(chosen_c)]  # the highest-scoring needed experts keep their places
        out.append(sorted(tops + [e for e in lows if e in available] + chosen_c + fill))
    return out
