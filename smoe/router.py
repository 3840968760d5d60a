"""SMoE's expert-cache router (paper Alg. 1, Eq. 1-2): substitute low-score experts that are not on the
device with resident experts of similar score.

Where it sits: the rules of `smoe.smoe_kernels.route_and_place`, which SMoE's `plan` calls (with the placement of
what the router computes) and `expert_cache_router` wraps for one layer's scores and a resident set; it sees neither a
device nor a clock.

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

from collections.abc import Iterable

import numpy as np
import torch

from .smoe_kernels import route_and_place

_NO_CLOCK = np.zeros((0, 0), dtype=np.int64)  # route_and_place's recency: none (row -1), nothing touched


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
    mask = np.zeros(E, dtype=bool)  # [E]
    mask[list(resident)] = True
    sel = np.ascontiguousarray(topk.numpy(), dtype=np.int64)  # [T,k]
    _, standins, _, _, _ = route_and_place(values, sel, mask, float(alpha), True, _NO_CLOCK, -1, 0)  # [T,k] or -1
    return [sorted(np.where(standins[t] >= 0, standins[t], sel[t]).tolist()) for t in range(T)]
