"""moe-infinity: activation-aware expert caching and prefetching from request-level activation traces
(Xue et al., "MoE-Infinity", arXiv 2401.14361). Rule: the current request's expert activation matrix (EAM:
per layer and expert, how many of its tokens were routed there) is matched by cosine similarity to the
closest EAM of past requests; that prediction ranks experts both for prefetching the next layers and for
eviction, with a decay that favours the layers about to run.

Re-implemented in this runtime (same copies, same kernels as every policy):
  - history: EAMs of past requests, one per sequence of a trace written by `smoe run --trace` (parameter
    `history`); without one, the prediction is the current request's own EAM;
  - predicted activation ratio p[l,e] = the matched EAM (mixed with the current one) normalised per layer;
  - priority of a cached expert (l,e) = (p[l,e] + eps) * (1 - d/L), d = how many MoE layers until l runs
    again; the lowest priority is evicted (ties: least recently used);
  - prefetch: after a layer is planned, the experts of the next `lookahead` MoE layers with the highest
    priority that are not resident, at most top-k per layer, into free slots or over lower-priority ones.
The paper's exact priority formulas live in its open-source code, which (its README warns) differs from
the paper; this is the paper's description.
"""
from __future__ import annotations

import numpy as np
import torch

from smoe.caching import CachingPolicy, hit_or_load
from smoe.errors import PolicyParamError
from smoe.plan import ExpertKey, LayerView, ModelInfo, Plan, PrefetchPlan
from smoe.policy import register_policy


def request_eams(trace_path: str, model: ModelInfo) -> list[np.ndarray]:
    """One EAM [L,E] per sequence of a recorded trace (decode rows are one token per sequence)."""
    try:
        records = torch.load(trace_path, weights_only=False)["records"]
    except FileNotFoundError:
        raise PolicyParamError(f"history trace {trace_path!r} does not exist") from None
    index = {layer: i for i, layer in enumerate(model.moe_layers)}
    eams: dict[int, np.ndarray] = {}
    for r in records:
        if r["phase"] != "decode" or r["layer"] not in index:
            continue
        for seq, row in enumerate(r["topk"].tolist()):
            eam = eams.setdefault(seq, np.zeros((len(index), model.num_experts)))
            eam[index[r["layer"]], row] += 1
    return list(eams.values())


@register_policy("moe-infinity")
class MoEInfinity(CachingPolicy):
    history: str | None = None  # a trace of past requests (`smoe run --trace`)
    lookahead: int = 2  # MoE layers ahead to prefetch for
    eps: float = 1e-3

    def setup(self, model: ModelInfo, capacity: int) -> list[ExpertKey]:
        self.model = model
        self.index = {layer: i for i, layer in enumerate(model.moe_layers)}
        self.current = np.zeros((len(model.moe_layers), model.num_experts))
        self.past = request_eams(self.history, model) if self.history else []
        self.layer_now = model.moe_layers[0]
        return []

    # ---- activation-aware prediction ---------------------------------------------------------------
    def predicted(self) -> np.ndarray:
        """[L,E] predicted activation ratios for the rest of this request."""
        eam = self.current
        if self.past and eam.sum() > 0:
            flat = eam.ravel() / (np.linalg.norm(eam) + 1e-12)
            sims = [float(flat @ (p.ravel() / (np.linalg.norm(p) + 1e-12))) for p in self.past]
            eam = eam + self.past[int(np.argmax(sims))]
        elif self.past:
            eam = np.mean(self.past, axis=0)
        return eam / np.maximum(eam.sum(axis=1, keepdims=True), 1e-12)

    def priority(self, key: ExpertKey, ratios: np.ndarray) -> float:
        L = len(self.model.moe_layers)
        d = (self.index[key[0]] - self.index[self.layer_now] - 1) % L
        return (ratios[self.index[key[0]], key[1]] + self.eps) * (1 - d / L)

    def priorities(self, ratios: np.ndarray) -> np.ndarray:
        """`priority` of every expert [L,E] (the same arithmetic, vectorised)."""
        L = len(self.model.moe_layers)
        d = (np.arange(L) - self.index[self.layer_now] - 1) % L  # [L]
        return (ratios + self.eps) * (1 - d / L)[:, None]

    # ---- caching ------------------------------------------------------------------------------------
    def eviction_rank(self, view: LayerView) -> tuple[np.ndarray, ...]:
        return (self.priorities(self.predicted()), self.recency)

    def plan(self, view: LayerView) -> Plan:
        self.layer_now = view.layer
        if view.phase == "decode":
            for row in view.routed:
                self.current[self.index[view.layer], row] += 1
        return self.plan_placement(view, hit_or_load(view))

    def prefetch(self, view: LayerView, ctx) -> PrefetchPlan | None:  # type: ignore[override]
        if view.phase != "decode":
            return None
        ratios = self.predicted()
        layers = self.model.moe_layers
        i = self.index[view.layer]
        ahead = [layers[(i + d) % len(layers)] for d in range(1, self.lookahead + 1) if i + d < len(layers)]
        want = []
        for layer in ahead:
            row = ratios[self.index[layer]]
            top = np.argsort(-row, kind="stable")[: self.model.top_k]
            want += [(layer, int(e)) for e in top if row[e] > 0 and (layer, int(e)) not in self.cached]
        want.sort(key=lambda k: -self.priority(k, ratios))
        # a cached expert is only traded for one with a higher priority
        return self.prefetch_plan(view, want, worth=lambda v, k: self.priority(v, ratios) < self.priority(k, ratios))
