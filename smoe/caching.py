"""Shared mechanics of policies that keep an expert cache (LRU, LFU, FIFO, SMoE, MoE-Infinity, HybriMoE).

Where it sits: a base class for policies; it turns "which experts this layer computes on the device" plus a
victim rule into a plan's `evict` and `discard`, and a ranked wish list into a prefetch. It keeps the cached
set and each expert's recency; a subclass states its victim rule (`victim`) and any other bookkeeping it
needs (`on_hit`, `on_insert`, `on_evict`).

Order within a layer: the resident experts the layer uses are touched first (they are shielded until the
layer finishes), then the missing ones are inserted in ascending id order. A victim is chosen among the
cached experts the layer does not use; only when a layer needs more experts than there are slots (a long
prefill) is it chosen among this layer's experts already computed, whose slots are then reused (`discard`).
"""
from __future__ import annotations

from collections.abc import Callable
from itertools import count

from .plan import Action, ExpertKey, LayerView, Plan, PrefetchPlan
from .policy import ExpertPolicy


class CachingPolicy(ExpertPolicy):
    def __post_init__(self):
        self.cached: set[ExpertKey] = set()  # mirrors the slot pool's resident set
        self.last: dict[ExpertKey, int] = {}  # logical time of each cached expert's last use (for LRU ties)
        self.clock = count()  # one tick per cache access

    # ---- the rule a subclass states -----------------------------------------------------------------
    def victim(self, candidates: list[ExpertKey], view: LayerView) -> ExpertKey:
        raise NotImplementedError

    def on_hit(self, key: ExpertKey) -> None:
        """Extra bookkeeping of a subclass when a cached expert is used (recency is kept here already)."""

    def on_insert(self, key: ExpertKey) -> None:
        """Extra bookkeeping when an expert enters the cache."""

    def on_evict(self, key: ExpertKey) -> None:
        """Extra bookkeeping when an expert leaves the cache."""

    # ---- mechanics -----------------------------------------------------------------------------------
    def _touch(self, key: ExpertKey) -> None:
        self.last[key] = next(self.clock)
        self.on_hit(key)

    def _insert(self, key: ExpertKey) -> None:
        self.cached.add(key)
        self.last[key] = next(self.clock)
        self.on_insert(key)

    def _drop(self, key: ExpertKey) -> None:
        self.cached.remove(key)
        del self.last[key]
        self.on_evict(key)

    def cache_plan(self, view: LayerView, placement: dict[int, Action]) -> tuple[list[ExpertKey], set[int]]:
        """Touch hits, insert loads, and return the (evict, discard) that make room for the loads."""
        layer = view.layer
        on_device = {e for e, a in placement.items() if a in (Action.HIT, Action.LOAD)}
        for e in sorted(e for e, a in placement.items() if a == Action.HIT):
            self._touch((layer, e))
        evict: list[ExpertKey] = []
        discard: set[int] = set()
        done = [(layer, e) for e in sorted(on_device) if placement[e] == Action.HIT]
        others = None  # the cached experts this layer does not use: listed once, victims taken out as they go
        for e in sorted(e for e, a in placement.items() if a == Action.LOAD):
            key = (layer, e)
            if len(self.cached) >= view.cache.capacity:
                if others is None:
                    others = [k for k in self.cached if not (k[0] == layer and k[1] in on_device)]
                if others:
                    v = self.victim(others, view)
                    others.remove(v)
                    evict.append(v)
                else:
                    v = self.victim([k for k in done if k in self.cached], view)
                    discard.add(v[1])
                self._drop(v)
            self._insert(key)
            done.append(key)
        return evict, discard

    def plan_placement(self, view: LayerView, placement: dict[int, Action]) -> Plan:
        evict, discard = self.cache_plan(view, placement)
        return Plan.per_expert(view, placement, evict=evict, discard=discard)

    def prefetch_plan(
        self,
        view: LayerView,
        want: list[ExpertKey],
        protected: set[ExpertKey] = frozenset(),
        worth: Callable[[ExpertKey, ExpertKey], bool] | None = None,
    ) -> PrefetchPlan | None:
        """Load `want` (best first) into free slots, then over victims chosen by `victim`. Never evicts an
        expert of the layer being computed, one loaded by this prefetch, or one in `protected`;
        `worth(victim, key)` may refuse to trade a victim for a key, which ends the prefetch."""
        keep = {k for k in self.cached if k[0] == view.layer} | set(protected)
        loads: list[ExpertKey] = []
        evict: list[ExpertKey] = []
        free = view.cache.free_slots
        candidates = None  # cached experts that may go: listed once, victims taken out as they go
        for key in want:
            if key in self.cached:
                continue
            if free > 0:
                free -= 1
            else:
                if candidates is None:
                    candidates = [k for k in self.cached if k not in keep]
                if not candidates:
                    break
                v = self.victim(candidates, view)
                if worth is not None and not worth(v, key):
                    break
                candidates.remove(v)
                self._drop(v)
                evict.append(v)
            self._insert(key)
            keep.add(key)
            loads.append(key)
        return PrefetchPlan(loads=loads, evict=evict) if loads else None


def hit_or_load(view: LayerView) -> dict[int, Action]:
    """Every needed expert: HIT if resident, else LOAD."""
    resident = view.cache.resident(view.layer)
    return {e: Action.HIT if e in resident else Action.LOAD for e in view.needed()}
