"""lfu: one global least-frequently-used expert cache (one of the traditional caches the SMoE paper's
v3 Fig. 19 compares its eviction against; the public SMoE code implements it). Rule: a missing expert is
loaded into the slot of the cached expert used least often since it was loaded (ties: the earliest loaded)."""
from __future__ import annotations

from smoe.caching import CachingPolicy, hit_or_load
from smoe.plan import ExpertKey, LayerView, Plan
from smoe.policy import register_policy


@register_policy("lfu")
class LFU(CachingPolicy):
    def __post_init__(self):
        super().__post_init__()
        self.uses: dict[ExpertKey, int] = {}
        self.born: dict[ExpertKey, int] = {}

    def on_hit(self, key: ExpertKey) -> None:
        self.uses[key] += 1

    def on_insert(self, key: ExpertKey) -> None:
        self.uses[key] = 1
        self.born[key] = next(self.clock)

    def on_evict(self, key: ExpertKey) -> None:
        del self.uses[key], self.born[key]

    def victim(self, candidates: list[ExpertKey], view: LayerView) -> ExpertKey:
        return min(candidates, key=lambda k: (self.uses[k], self.born[k]))

    def plan(self, view: LayerView) -> Plan:
        return self.plan_placement(view, hit_or_load(view))
