"""Shared mechanics of policies that keep an expert cache (LRU, LFU, FIFO, SMoE, MoE-Infinity, HybriMoE).

Where it sits: a base class for policies; it turns "which experts this layer computes on the device" plus a
victim rule into a plan's `evict` and `discard`, and a ranked wish list into a prefetch. It keeps the cached
set and each expert's recency and insertion time; a subclass states its victim rule as sort keys over every
expert (`eviction_rank`) and any other bookkeeping it needs (`on_hit`, `on_insert`, `on_evict`).

Order within a layer: the resident experts the layer uses are touched first (they are shielded until the
layer finishes), then the missing ones are inserted in ascending id order. A victim is chosen among the
cached experts the layer does not use; only when a layer needs more experts than there are slots (a long
prefill) is it chosen among this layer's experts already computed, whose slots are then reused (`discard`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .plan import _HIT, _LOAD, Action, ExpertKey, LayerView, ModelInfo, Plan, PrefetchPlan
from .policy import ExpertPolicy


class CachingPolicy(ExpertPolicy):
    def __post_init__(self):
        self.cached: set[ExpertKey] = set()  # mirrors the slot pool's resident set
        self.tick = 0  # logical time: one tick per cache access
        # Per-expert state as [L,E] arrays (row = MoE layer in model order), so a victim search is a few
        # vectorised operations over the cache, not a Python loop; sized on first use (`_bind`).
        self.rows: dict[int, int] = {}  # decoder layer -> row
        self.layers: list[int] = []  # row -> decoder layer
        self.in_cache = np.zeros((0, 0), dtype=bool)  # [L,E]
        self.recency = np.zeros((0, 0), dtype=np.int64)  # [L,E] logical time of last use (or insertion)
        self.born = np.zeros((0, 0), dtype=np.int64)  # [L,E] logical time of insertion
        self._everyone = np.ones((0, 0), dtype=bool)  # [L,E] all true: a victim search's `allowed` starts as a copy
        self._counts_hits = type(self).on_hit is not CachingPolicy.on_hit  # a subclass keeps per-hit state

    # ---- the rule a subclass states -----------------------------------------------------------------
    def eviction_rank(self, view: LayerView) -> tuple[np.ndarray, ...]:
        """Sort keys of every expert, [L,E] each (or broadcastable), most significant first: the cached
        expert with the lowest keys is evicted first. Must not change while one layer is being planned."""
        raise NotImplementedError

    def on_hit(self, key: ExpertKey) -> None:
        """Extra bookkeeping of a subclass when a cached expert is used (recency is kept here already)."""

    def on_insert(self, key: ExpertKey) -> None:
        """Extra bookkeeping when an expert enters the cache."""

    def on_evict(self, key: ExpertKey) -> None:
        """Extra bookkeeping when an expert leaves the cache."""

    # ---- mechanics -----------------------------------------------------------------------------------
    def _bind(self, model: ModelInfo) -> None:
        if self.layers:
            return
        self.layers = list(model.moe_layers)
        self.rows = {layer: i for i, layer in enumerate(self.layers)}
        shape = (len(self.layers), model.num_experts)
        self.in_cache = np.zeros(shape, dtype=bool)
        self.recency = np.zeros(shape, dtype=np.int64)
        self.born = np.zeros(shape, dtype=np.int64)
        self._everyone = np.ones(shape, dtype=bool)

    def at(self, key: ExpertKey) -> tuple[int, int]:
        """(row, expert) of a key in the [L,E] arrays."""
        return self.rows[key[0]], key[1]

    def _touch_layer(self, layer: int, experts: list[int]) -> None:
        """Use cached experts of one layer, in the given order: one tick each."""
        row = self.recency[self.rows[layer]]  # [E] view
        for tick, e in enumerate(experts, self.tick):  # a few scalar writes beat one fancy-indexed write here
            row[e] = tick
        self.tick += len(experts)
        if self._counts_hits:
            for e in experts:
                self.on_hit((layer, e))

    def _insert(self, key: ExpertKey) -> None:
        at = self.at(key)
        self.cached.add(key)
        self.in_cache[at] = True
        self.recency[at] = self.born[at] = self.tick
        self.tick += 1
        self.on_insert(key)

    def _drop(self, key: ExpertKey) -> None:
        self.cached.remove(key)
        self.in_cache[self.at(key)] = False
        self.on_evict(key)

    PICKS = 2  # at most this many victims wanted: found one by one (a few vectorised minimums each), no sort

    def victims(self, view: LayerView, allowed: np.ndarray, wanted: int) -> Iterator[ExpertKey]:
        """The cached experts where `allowed` [L,E] is true, in eviction order (best victim first): ascending keys
        of `eviction_rank`, ties to the lower (layer row, expert). The order is fixed once: within one layer's
        planning no candidate's rank changes (victims leave, new keys are not candidates). `wanted`: how many the
        caller takes at most (an override may yield no more: SMoE's compiled search does not); a decode layer often
        needs a victim or two, which are picked by minimum without sorting every candidate (more than that sorts the
        rest)."""
        mask = self.in_cache & allowed  # [L,E]
        idx = np.flatnonzero(mask)  # [n] flat indices of the candidates not yet yielded, ascending
        keys = self.eviction_rank(view)  # most significant first
        E = mask.shape[1]
        if keys and wanted <= self.PICKS:
            for _ in range(min(wanted, len(idx))):
                flat = _lowest(idx, keys, mask.shape)
                idx = idx[idx != flat]
                yield self.layers[flat // E], flat % E
        keys = [(k if k.shape == mask.shape else np.broadcast_to(k, mask.shape)).ravel()[idx] for k in keys]
        order = idx[np.lexsort(keys[::-1])] if keys else idx  # lexsort: last key most significant, stable
        yield from ((self.layers[i // E], i % E) for i in order.tolist())

    def cache_plan(self, view: LayerView, placement: dict[int, Action]) -> tuple[list[ExpertKey], set[int]]:
        """Touch hits, insert loads, and return the (evict, discard) that make room for the loads."""
        self._bind(view.model)
        layer = view.layer
        hits: list[int] = []
        loads: list[int] = []
        for e, a in placement.items():
            if a == _HIT:
                hits.append(e)
            elif a == _LOAD:
                loads.append(e)
        hits.sort()
        loads.sort()
        if hits:
            self._touch_layer(layer, hits)
        evict: list[ExpertKey] = []
        discard: set[int] = set()
        if not loads:
            return evict, discard
        done = [(layer, e) for e in hits]
        others = None  # the cached experts this layer does not use, in eviction order
        for e in loads:
            key = (layer, e)
            if len(self.cached) >= view.cache.capacity:
                if others is None:
                    allowed = self._everyone.copy()  # (one C call: np.ones_like is Python, 10-17 us cold)
                    allowed[self.rows[layer], hits + loads] = False  # the shield: what this layer computes
                    others = self.victims(view, allowed, len(loads))
                v = next(others, None)
                if v is not None:
                    evict.append(v)
                else:  # a layer that needs more experts than there are slots: reuse its own computed ones
                    allowed = np.zeros(self.in_cache.shape, dtype=bool)
                    for k in done:
                        allowed[self.at(k)] = True
                    v = next(self.victims(view, allowed, 1))
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
        """Load `want` (best first) into free slots, then over victims in `eviction_rank` order. Never evicts
        an expert of the layer being computed, one loaded by this prefetch, or one in `protected`;
        `worth(victim, key)` may refuse to trade a victim for a key, which ends the prefetch."""
        self._bind(view.model)
        loads: list[ExpertKey] = []
        evict: list[ExpertKey] = []
        free = view.cache.free_slots
        candidates = None  # cached experts that may go, in eviction order
        for key in want:
            if key in self.cached:
                continue
            if free > 0:
                free -= 1
            else:
                if candidates is None:
                    allowed = self._everyone.copy()
                    allowed[self.rows[view.layer]] = False
                    for k in (*protected, *loads):
                        allowed[self.at(k)] = False
                    candidates = self.victims(view, allowed, len(want))
                v = next(candidates, None)
                if v is None or (worth is not None and not worth(v, key)):
                    break
                self._drop(v)
                evict.append(v)
            self._insert(key)
            loads.append(key)
        return PrefetchPlan(loads=loads, evict=evict) if loads else None


def _lowest(cands: np.ndarray, keys: tuple[np.ndarray, ...], shape: tuple[int, int]) -> int:
    """The flat index among `cands` [n] (ascending, n >= 1) with the lowest `keys` (most significant first, each
    `shape` or broadcastable), ties to the lowest index.

    Narrows the candidates key by key, gathering only the ones still tied, and stops once one is left (after
    the first key with distinct values, usually). The ufuncs are called directly (`np.minimum.reduce`,
    `np.count_nonzero`): the array methods' Python wrappers cost more than the work on a few hundred elements."""
    best = cands
    for k in keys:
        if len(best) == 1:
            break
        if k.dtype == bool and not np.count_nonzero(k):  # all false ranks nothing (SMoE's "prefetched", usually)
            continue
        kb = (k if k.shape == shape else np.broadcast_to(k, shape)).take(best)  # [m] the tied ones' keys
        best = best[kb == np.minimum.reduce(kb)]
    return int(best[0])


def hit_or_load(view: LayerView) -> dict[int, Action]:
    """Every needed expert: HIT if resident, else LOAD."""
    resident = view.cache.resident(view.layer)
    return {e: Action.HIT if e in resident else Action.LOAD for e in view.needed()}
