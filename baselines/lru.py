"""lru: one global least-recently-used expert cache across all layers (mixtral-offloading, Eliseev &
Mazur 2023, arXiv 2312.17238; the SMoE paper's ablation baseline). Rule: a missing expert is loaded into
the slot of the least recently used one.

The experts a layer needs are touched resident ones first (they are shielded while the layer computes),
then the missing ones, each group in ascending id order; fed the same accesses, a `cachetools.LRUCache`
gives the same hit/miss sequence.
"""
from __future__ import annotations

import numpy as np

from smoe.caching import CachingPolicy, hit_or_load
from smoe.plan import LayerView, Plan
from smoe.policy import register_policy


@register_policy("lru")
class LRU(CachingPolicy):
    def eviction_rank(self, view: LayerView) -> tuple[np.ndarray, ...]:
        return (self.recency,)

    def plan(self, view: LayerView) -> Plan:
        return self.plan_placement(view, hit_or_load(view))
