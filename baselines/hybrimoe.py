"""hybrimoe: hybrid CPU-GPU scheduling and cache management (Zhong et al., "HybriMoE", arXiv 2504.05897),
without quantization, as the SMoE paper ran it. Rules:
  - dynamic intra-layer scheduling: the layer's missing experts, most tokens first (ties: higher score),
    each go to whichever side would finish it earlier: the CPU queue (c_cpu per expert and token share)
    or the PCIe queue followed by the device (c_load per expert);
  - impact-driven prefetch: the next `depth` MoE layers' routers are applied to this layer's approximate
    output; their predicted top-k experts that are not resident are ranked by impact (predicted score x the
    CPU time a miss would cost, discounted by layer distance); as many of the best are loaded as fit in the
    time the PCIe link would otherwise idle while this layer finishes (its CPU queue beyond its loads), at
    least one and at most `prefetch_size`;
  - MRS cache: every expert keeps a decayed score S <- decay*S + (1-decay)*(router score this pass); the
    cached expert with the lowest S is evicted (ties: least recently used).
Costs follow the same fixed model as SMoE's balancing (expert bytes over a PCIe rate, by default the link the run
emulates, and over a CPU streaming rate), so decisions do not depend on timing.

Parameters: `depth` 1 (the next MoE layer, as its source describes impact-driven prefetch). Swept at the
Qwen2-57B shape (48 GB, batch 1 and 3, exam and reasoning; decisions replayed on the CPU, TPOT modelled by the
cost model fitted on the H200: `results/baseline_tuning/`): looking 2 or 3 layers ahead adds a predictor pass
each and no hit rate (0.636-0.900 at every depth), so depth 2 is 0-35% slower than depth 1 (most on a fast
link); at depth 1 the default `decay` 0.5 and `prefetch_size` 4 come within 2.3% of the best of decay
0.3-0.8 and prefetch size 2-8 in every setting.
"""
from __future__ import annotations

import numpy as np
import torch

from smoe.balance import load_seconds
from smoe.caching import CachingPolicy
from smoe.errors import PolicyParamError
from smoe.plan import Action, ExpertKey, LayerView, ModelInfo, Plan, PrefetchPlan
from smoe.policy import register_policy


@register_policy("hybrimoe")
class HybriMoE(CachingPolicy):
    decay: float = 0.5  # MRS: weight of the old score
    depth: int = 1  # MoE layers of look-ahead for prefetch
    prefetch_size: int = 4  # experts prefetched per layer at most
    pcie_gbps: float | None = None  # None: the run's emulated link, else 25 GB/s (`smoe.balance.load_seconds`)
    cpu_gbps: float = 20.0

    def __post_init__(self):
        super().__post_init__()
        if (self.pcie_gbps is not None and not self.pcie_gbps > 0) or not self.cpu_gbps > 0 or self.depth < 1 \
                or self.prefetch_size < 1 or not 0 <= self.decay < 1:
            raise PolicyParamError(f"need pcie_gbps > 0 or None, cpu_gbps > 0, depth >= 1, prefetch_size >= 1 and "
                                   f"0 <= decay < 1; got {self.pcie_gbps}, {self.cpu_gbps}, {self.depth}, "
                                   f"{self.prefetch_size}, {self.decay}")

    def setup(self, model: ModelInfo, capacity: int) -> list[ExpertKey]:
        self.model = model
        self.mrs = np.zeros((len(model.moe_layers), model.num_experts))  # [L,E] decayed scores (0: never seen)
        self.seen: set[int] = set()
        self.pcie_idle = 0.0
        return []

    def eviction_rank(self, view: LayerView) -> tuple[np.ndarray, ...]:
        return (self.mrs, self.recency)

    def observe(self, view: LayerView, plan: Plan) -> None:
        row = view.mean_scores().astype(np.float64)
        i = self.rows[view.layer]  # plan has bound the rows
        self.mrs[i] = self.decay * self.mrs[i] + (1 - self.decay) * row if view.layer in self.seen else row
        self.seen.add(view.layer)

    def plan(self, view: LayerView) -> Plan:
        resident = view.cache.resident(view.layer)
        needed = view.needed()
        placement = {e: Action.HIT for e in needed if e in resident}
        missing = [e for e in needed if e not in resident]
        if not missing:
            self.pcie_idle = 0.0
            return self.plan_placement(view, placement)
        tokens = np.bincount(view.topk_np.ravel(), minlength=view.model.num_experts).tolist()  # [E]
        best = view.scores_np.max(axis=0).tolist()  # [E] best score over the batch
        missing.sort(key=lambda e: (-tokens[e], -best[e], e))
        c_load = load_seconds(view.model, self.pcie_gbps)
        c_cpu = view.model.expert_bytes / (self.cpu_gbps * 1e9)
        t_gpu = t_cpu = 0.0
        for e in missing:
            cpu_finish = t_cpu + c_cpu * (1 + 0.1 * (tokens[e] - 1))  # weights streamed once, a little per token
            gpu_finish = t_gpu + c_load
            if gpu_finish <= cpu_finish:
                placement[e], t_gpu = Action.LOAD, gpu_finish
            else:
                placement[e], t_cpu = Action.CPU, cpu_finish
        self.pcie_idle = max(0.0, t_cpu - t_gpu)  # link time left while the CPU finishes this layer
        return self.plan_placement(view, placement)

    @property
    def predictor_passes(self) -> int:
        return self.depth  # one router pass per look-ahead layer

    def prefetch(self, view: LayerView, ctx) -> PrefetchPlan | None:  # type: ignore[override]
        if view.phase != "decode":
            return None
        layers = self.model.moe_layers
        i = layers.index(view.layer)
        c_cpu = view.model.expert_bytes / (self.cpu_gbps * 1e9)
        impact: list[tuple[float, ExpertKey]] = []
        targets = layers[i + 1:i + 1 + self.depth]
        for d, (target, predicted) in enumerate(zip(targets, ctx.gate_scores(targets)), 1):
            scores = torch.from_numpy(predicted).max(dim=0).values  # [E] best predicted score over the batch
            top, best = scores.topk(self.model.top_k).indices.tolist(), scores.tolist()
            impact += [(best[e] * c_cpu / d, (target, e)) for e in top if (target, e) not in self.cached]
        impact.sort(key=lambda x: (-x[0], x[1]))
        c_load = load_seconds(view.model, self.pcie_gbps)
        n = min(self.prefetch_size, max(1, int(self.pcie_idle / c_load)))
        return self.prefetch_plan(view, [key for _, key in impact[:n]])
