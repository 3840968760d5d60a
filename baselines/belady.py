"""belady: offline-optimal eviction on a recorded trace (Belady 1966): the hit-rate ceiling of a cache of
this size for this run, reported and never a speed contender. Rule: the victim is the cached expert whose
next use lies farthest in the future (never used again first; ties: lower layer, then lower id).

It needs a trace of the same run (`smoe run --trace`, same model, prompts, batch and length, with any
policy that does not change the router's choice); a run whose routing departs from the trace is refused.
"""
from __future__ import annotations

from bisect import bisect_right

import numpy as np
import torch

from smoe.caching import CachingPolicy, hit_or_load
from smoe.errors import PolicyError, PolicyParamError
from smoe.plan import ExpertKey, LayerView, ModelInfo, Plan
from smoe.policy import register_policy


@register_policy("belady")
class Belady(CachingPolicy):
    trace: str | None = None  # the recorded run whose future it knows

    def setup(self, model: ModelInfo, capacity: int) -> list[ExpertKey]:
        if self.trace is None:
            raise PolicyParamError("belady needs the run's recorded trace: --set trace=FILE (from smoe run --trace)")
        try:
            records = torch.load(self.trace, weights_only=False)["records"]
        except FileNotFoundError:
            raise PolicyParamError(f"trace {self.trace!r} does not exist") from None
        self.future = [(r["step"], r["layer"], r["topk"].long()) for r in records]
        self.uses: dict[ExpertKey, list[int]] = {}
        for pos, (_, layer, topk) in enumerate(self.future):
            for e in sorted(set(topk.flatten().tolist())):
                self.uses.setdefault((layer, e), []).append(pos)
        self.pos = -1
        return []

    def next_use(self, key: ExpertKey) -> float:
        uses = self.uses.get(key, [])
        i = bisect_right(uses, self.pos)
        return uses[i] if i < len(uses) else float("inf")

    def eviction_rank(self, view: LayerView) -> tuple[np.ndarray, ...]:
        far = np.zeros(self.in_cache.shape)  # [L,E] minus the next use of each cached expert (-inf: never)
        for key in self.cached:
            far[self.at(key)] = -self.next_use(key)
        return (far,)  # ties: the lower layer, then the lower id (the arrays' order; the sort is stable)

    def plan(self, view: LayerView) -> Plan:
        self.pos += 1
        if self.pos >= len(self.future):
            raise PolicyError(f"policy 'belady': the run is longer than its trace {self.trace!r}")
        step, layer, topk = self.future[self.pos]
        if (step, layer) != (view.step, view.layer) or not torch.equal(topk, view.topk):
            raise PolicyError(
                f"policy 'belady': routing at step {view.step}, layer {view.layer} departs from trace {self.trace!r}"
            )
        return self.plan_placement(view, hit_or_load(view))
