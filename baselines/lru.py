"""lru: one global least-recently-used expert cache across all layers (mixtral-offloading, Eliseev &
Mazur 2023, arXiv 2312.17238; the SMoE paper's ablation baseline). Rule: a missing expert is loaded into
the slot of the least recently used one.

The experts a layer needs are touched resident ones first (they are shielded while the layer computes),
then the missing ones, each group in ascending id order; fed the same accesses, a `cachetools.LRUCache`
gives the same hit/miss sequence. When one layer needs more experts than there are slots
(a long prefill), the victim can be an expert this layer already computed: its slot is reused once it
has been computed (`discard`), exactly as the LRU order says.
"""
from __future__ import annotations

from collections import OrderedDict

from smoe.plan import Action, ExpertKey, LayerView, Plan
from smoe.policy import ExpertPolicy, register_policy


@register_policy("lru")
class LRU(ExpertPolicy):
    def __post_init__(self):
        self._order: OrderedDict[ExpertKey, None] = OrderedDict()  # the cache's keys, least recent first

    def plan(self, view: LayerView) -> Plan:
        layer = view.layer
        before = set(view.cache.keys())
        placement: dict[int, Action] = {}
        evict: list[ExpertKey] = []
        discard: set[int] = set()
        needed = view.needed()
        for e in needed:
            if (layer, e) in self._order:
                placement[e] = Action.HIT
                self._order.move_to_end((layer, e))
        for e in needed:
            key = (layer, e)
            if e in placement:
                continue
            placement[e] = Action.LOAD
            if len(self._order) >= view.cache.capacity:
                victim, _ = self._order.popitem(last=False)
                if victim[0] == layer and victim[1] in placement:
                    discard.add(victim[1])  # computed earlier in this layer: its slot is reused after use
                else:
                    assert victim in before
                    evict.append(victim)
            self._order[key] = None
        return Plan.per_expert(view, placement, evict=evict, discard=discard)
