"""Statistics computed from a recorded trace (`smoe run --trace`, or `Runtime(trace=True).engine.trace`).

Where it sits: after a run; reads only the trace records (per forward pass and MoE layer: router scores,
top-k, executed actions, loads, prefetches).
"""
from __future__ import annotations

import torch


def passes(records: list[dict]) -> list[int]:
    """The generate call each record belongs to: a trace holds every generate call of its run in order, and each call
    counts its steps from 0 again (prefill 0, decode 1, 2, ...), so (step, layer) names a forward pass only within one
    call. Within a call the records come in strictly increasing (step, layer) order; a record that does not
    follow its predecessor so starts the next call. -> [len(records)] call index per record"""
    out, call, prev = [], 0, None
    for r in records:
        key = (r["step"], r["layer"])
        if prev is not None and key <= prev:
            call += 1
        out.append(call)
        prev = key
    return out


def prefetch_accuracy(records: list[dict], alpha: float, k: int) -> dict:
    """The paper's prefetch accuracy (Fig. 17/21): of the experts prefetched for a layer, the share that were
    top-score there (in some token's top-k with score >= (1+alpha) * S_{k+1}), and the share that were
    routed there at all (in some token's top-k). Paper: about 82% and 95%."""
    calls = passes(records)
    by_pass = {(c, r["step"], r["layer"]): r for c, r in zip(calls, records)}
    prefetched = top_score = routed = 0
    for c, r in zip(calls, records):
        for layer, e in r.get("prefetch") or []:
            # the expert's layer runs later in the same forward pass of the same generate call
            t = by_pass.get((c, r["step"], layer))
            if t is None:
                continue
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


def _decode(records: list[dict]) -> list[list[dict]]:
    """Decode records per generate call and MoE layer, each list in step order (steps are consecutive only
    within one call: `passes`)."""
    out: dict[tuple[int, int], list[dict]] = {}
    for c, r in zip(passes(records), records):
        if r.get("phase") == "decode":
            out.setdefault((c, r["layer"]), []).append(r)
    return list(out.values())


def score_by_rank(records: list[dict]) -> torch.Tensor:
    """Paper Fig. 4 [v3 Fig. 5]: the mean router score at each rank position (scores sorted in descending
    order per token), over every decode token and MoE layer of the trace. -> [E]"""
    rows = [r["scores"].float().sort(dim=-1, descending=True).values for rs in _decode(records) for r in rs]
    if not rows:
        raise ValueError("the trace has no decode records")
    return torch.cat(rows).mean(dim=0)


def reuse_by_rank(records: list[dict], horizon: int = 3) -> torch.Tensor:
    """Paper Fig. 6 [v3 Fig. 7]: for the expert at each score rank of a token's router output at one decode
    step, the probability that the same sequence routes to it (in its top-k) at the same layer within the
    next `horizon` decode steps. Steps without `horizon` successors are left out. -> [E]

    The paper also counts use as a substitute; from a trace without substitution (lru, as the DAG records)
    only top-k use is seen, so this is a lower bound of the paper's quantity."""
    hits = count = None
    for rs in _decode(records):
        for i in range(len(rs) - horizon):
            order = rs[i]["scores"].float().argsort(dim=-1, descending=True)  # [B,E] expert ids by rank
            used = torch.zeros_like(order, dtype=torch.bool)  # [B,E] by expert id
            for nxt in rs[i + 1: i + 1 + horizon]:
                used.scatter_(1, nxt["topk"].long(), True)
            by_rank = used.gather(1, order).float().sum(dim=0)  # [E]
            hits = by_rank if hits is None else hits + by_rank
            count = order.shape[0] + (0 if count is None else count)
    if hits is None:
        raise ValueError(f"the trace has no decode step with {horizon} successors")
    return hits / count


def plan_summary(records: list[dict]) -> list[list[int]]:
    """Per decode forward of each layer, what it executed: [step, layer, tokens, experts computed on the device,
    experts loaded, experts run on the CPU, experts prefetched]: the input a cost model replays."""
    out = []
    for r in records:
        if r["phase"] != "decode":
            continue
        actions, topk = r["actions"].long(), r["topk"].long()  # [T,k]
        used = set(topk[(actions == 0) | (actions == 1)].tolist())  # HIT / LOAD: computed on the device
        if r.get("standins") is not None:
            used |= set(r["standins"].long()[actions == 3].tolist())  # SUBSTITUTE: a resident stand-in
        out.append([int(r["step"]), int(r["layer"]), int(topk.shape[0]), len(used), len(r["loads"]), len(r["cpu"]),
                    len(r.get("prefetch") or [])])
    return out
