"""lfu: one global least-frequently-used expert cache (one of the traditional caches the SMoE paper's
v3 Fig. 19 compares its eviction against; the public SMoE code implements it). Rule: a missing expert is
loaded into the slot of the cached expert used least often since it was loaded (ties: the earliest loaded)."""
from __future__ import annotations

import numpy as np

from smoe.caching import CachingPolicy, hit_or_load
from smoe.plan import ExpertKey, LayerView, Plan
from smoe.policy import register_policy


@register_policy("lfu")
class LFU(CachingPolicy):
    def __post_init__(self):
        super().__post_init__()
        self.uses: np.ndarray | None = None  # [L,E] uses since each cached expert was loaded

    def on_hit(self, key: ExpertKey) -> None:
        self.uses[self.at(key)] += 1

    def on_insert(self, key: ExpertKey) -> None:
        if self.uses is None:
            self.uses = np.zeros_like(self.born)
        self.uses[self.at(key)] = 1

    def eviction_rank(self, view: LayerView) -> tuple[np.ndarray, ...]:
        return (self.uses, self.born)

    def plan(self, view: LayerView) -> Plan:
        return self.plan_placement(view, hit_or_load(view))
