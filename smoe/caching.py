"""Shared mechanics of policies that keep an expert cache (LRU, LFU, FIFO, SMoE's score-aware eviction).

Where it sits: a base class for policies; it turns "which experts this layer computes on the device" plus a
victim rule into a plan's `evict` and `discard`. A subclass states only its victim rule (`victim`) and the
bookkeeping it needs (`on_hit`, `on_insert`, `on_evict`).

Order within a layer: the resident experts the layer uses are touched first (they are shielded until the
layer finishes), then the missing ones are inserted in ascending id order. A victim is chosen among the
cached experts the layer does not use; only when a layer needs more experts than there are slots (a long
prefill) is it chosen among this layer's experts already computed, whose slots are then reused (`discard`).
"""
from __future__ import annotations

from itertools import count

from .plan import Action, ExpertKey, LayerView, Plan
from .policy import ExpertPolicy


class CachingPolicy(ExpertPolicy):
    def __post_init__(self):
        self.cached: set[ExpertKey] = set()  # mirrors the slot pool's resident set
        self.clock = count()  # logical time: one tick per cache access

    # ---- the rule a subclass states -----------------------------------------------------------------
    def victim(self, candidates: list[ExpertKey], view: LayerView) -> ExpertKey:
        raise NotImplementedError

    def on_hit(self, key: ExpertKey) -> None:
        pass

    def on_insert(self, key: ExpertKey) -> None:
        pass

    def on_evict(self, key: ExpertKey) -> None:
        pass

    # ---- mechanics -----------------------------------------------------------------------------------
    def preload(self, keys: list[ExpertKey]) -> list[ExpertKey]:
        for key in keys:
            self.cached.add(key)
            self.on_insert(key)
        return keys

    def cache_plan(self, view: LayerView, placement: dict[int, Action]) -> tuple[list[ExpertKey], set[int]]:
        """Touch hits, insert loads, and return the (evict, discard) that make room for the loads."""
        layer = view.layer
        on_device = {e for e, a in placement.items() if a in (Action.HIT, Action.LOAD)}
        for e in sorted(e for e, a in placement.items() if a == Action.HIT):
            self.on_hit((layer, e))
        evict: list[ExpertKey] = []
        discard: set[int] = set()
        done = [(layer, e) for e in sorted(on_device) if placement[e] == Action.HIT]
        for e in sorted(e for e, a in placement.items() if a == Action.LOAD):
            key = (layer, e)
            if len(self.cached) >= view.cache.capacity:
                others = [k for k in self.cached if not (k[0] == layer and k[1] in on_device)]
                if others:
                    v = self.victim(others, view)
                    evict.append(v)
                else:
                    v = self.victim([k for k in done if k in self.cached], view)
                    discard.add(v[1])
                self.cached.remove(v)
                self.on_evict(v)
            self.cached.add(key)
            self.on_insert(key)
            done.append(key)
        return evict, discard

    def plan_placement(self, view: LayerView, placement: dict[int, Action]) -> Plan:
        evict, discard = self.cache_plan(view, placement)
        return Plan.per_expert(view, placement, evict=evict, discard=discard)


def hit_or_load(view: LayerView) -> dict[int, Action]:
    """Every needed expert: HIT if resident, else LOAD."""
    resident = view.cache.resident(view.layer)
    return {e: Action.HIT if e in resident else Action.LOAD for e in view.needed()}
