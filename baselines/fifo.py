"""fifo: one global first-in-first-out expert cache (the "FCFS" cache of the public SMoE code, one of the
traditional caches of the paper's v3 Fig. 19). Rule: a missing expert is loaded into the slot of the
expert that has been cached longest; hits do not change the order."""
from __future__ import annotations

from smoe.caching import CachingPolicy, hit_or_load
from smoe.plan import ExpertKey, LayerView, Plan
from smoe.policy import register_policy


@register_policy("fifo")
class FIFO(CachingPolicy):
    def __post_init__(self):
        super().__post_init__()
        self.born: dict[ExpertKey, int] = {}

    def on_insert(self, key: ExpertKey) -> None:
        self.born[key] = next(self.clock)

    def on_evict(self, key: ExpertKey) -> None:
        del self.born[key]

    def victim(self, candidates: list[ExpertKey], view: LayerView) -> ExpertKey:
        return min(candidates, key=self.born.__getitem__)

    def plan(self, view: LayerView) -> Plan:
        return self.plan_placement(view, hit_or_load(view))
