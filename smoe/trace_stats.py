"""Statistics computed from a recorded trace (`smoe run --trace`, or `Runtime(trace=True).engine.trace`).

Where it sits: after a run; reads only the trace records (per forward pass and MoE layer: router scores,
top-k, executed actions, loads, prefetches).
"""
from __future__ import annotations


def prefetch_accuracy(records: list[dict], alpha: float, k: int) -> dict:
    """The paper's prefetch accuracy (Fig. 17/21): of the experts prefetched for a layer, the share that were
    top-score there (in some token's top-k with score >= (1+alpha) * S_{k+1}), and the share that were
    routed there at all (in some token's top-k). Paper: about 82% and 95%."""
    by_pass = {(r["step"], r["layer"]): r for r in records}
    order = sorted(by_pass)
    prefetched = top_score = routed = 0
    for r in records:
        for layer, e in r.get("prefetch") or []:
            # the expert's layer runs next in the same pass (a prefetch targets a later layer)
            target = next((key for key in order if key[0] == r["step"] and key[1] == layer), None)
            if target is None:
                continue
            t = by_pass[target]
            scores, topk = t["scores"].float(), t["topk"].long()
            kth1 = scores.topk(k + 1, dim=-1).values[:, k]  # [T]
            prefetched += 1
            in_topk = (topk == e).any(dim=1)  # [T]
            routed += bool(in_topk.any())
            top_score += bool((in_topk & (scores[:, e] >= (1 + alpha) * kth1)).any())
    return {
        "prefetched": prefetched,
        "top_score_share": top_score / prefetched if prefetched else None,
        "routed_share": routed / prefetched if prefetched else None,
    }
