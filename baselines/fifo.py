"""fifo: one global first-in-first-out expert cache (the "FCFS" cache of the public SMoE code, one of the
traditional caches of the paper's v3 Fig. 19). Rule: a missing expert is loaded into the slot of the
expert that has been cached longest; hits do not change the order."""
from __future__ import annotations

import numpy as np

from smoe.caching import CachingPolicy, hit_or_load
from smoe.plan import LayerView, Plan
from smoe.policy import register_policy


@register_policy("fifo")
class FIFO(CachingPolicy):
    def eviction_rank(self, view: LayerView) -> tuple[np.ndarray, ...]:
        return (self.born,)

    def plan(self, view: LayerView) -> Plan:
        return self.plan_placement(view, hit_or_load(view))
