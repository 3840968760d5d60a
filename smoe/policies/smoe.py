"""SMoE (arXiv 2508.18983) as a policy, and the paper's ablation steps and accuracy comparisons.

One class composes the paper's mechanisms; each registered name switches some on (paper Fig. 14/17):
  smoe-ce       score-aware eviction (Eq. 3) with the protection shield; missing experts are loaded
  smoe-ce-cr    + the expert-cache router (Alg. 1): low-score experts substituted by resident ones
  smoe-ce-cr-pre + top-score prefetch: while layer i computes, layer i+1's scores are predicted (its
                  attention over the read-only KV cache and its router, on an approximate hidden state)
                  and its predicted top-score experts that are not resident are loaded
  smoe          + CPU/PCIe balancing (Alg. 2) of the experts still missing: the full system
  smoe-early    the full system with the public code's predictor: layer i+1's scores predicted from layer i's
                output without its routed experts (residual + shared expert) and without attention, queued
                right behind layer i's router, so the host reads it with layer i's plan instead of waiting for
                it after the resident experts (one wait per layer instead of two)
  smoe-ce-cr-ba   the router and balancing without prefetch (an extra step for the ablation)
  skip          the experts SMoE would substitute are dropped instead (Lu et al. 2024, arXiv 2402.14800;
                paper Table V)
  score-lower   no substitution; the router scores of low-score experts are multiplied by `lower` before
                the family's weight rule (paper Table VI)

Score-aware eviction: the victim is the unshielded resident expert with the lowest mean router score over
the last `window` forward passes of its layer (every expert's score counts, selected or not; the prefill
counts as one pass, scored by its tokens' mean); ties go to the least recently used. Experts the layer being
planned computes on the device are shielded; experts brought by a prefetch and not yet used rank between
shielded and normal. `window=None` gives plain LRU eviction.

Gate weights of a computed set that differs from the router's top-k follow the family's rule (its own router
probability, renormalised over the computed set where the family renormalises, times the routed scaling
factor): see `smoe.families.Family.weights`. The public code weights substitutes by their own probability
without renormalisation, which is the same for its models (norm_topk_prob false).

Prefetch: `prefetch_mode="attention"` runs layer i+1's attention in the prediction (the paper's predictor);
`"no-attention"` skips it; `"early"` also leaves out layer i's routed experts, as the public code's predictor does
(MoE output ~ identity + shared experts), which lets the engine queue it before planning layer i
(`NextLayerPredictor.early`); `"early-attention"` is the paper's predictor (attention included) on that same
approximation, queued as early; `"none"` turns prefetch off. Predicted
top-score experts are those of the predicted top-k with score >= (1+alpha) * S_{k+1}. Prefetched experts that
are not yet used may take at most `prefetch_share` of the slots (the public code caps them at half), and a
prefetch never evicts an expert of the layer being computed, nor another prefetched one.

Prefetch gate (`prefetch_gate`, ours, not the paper's): a prediction costs the host a wait for the device in every
layer, which buys nothing where the next layer's experts are resident anyway. With `prefetch_gate=n`, layer i+1 is
predicted only if it needed the link in one of its last n forward passes: an expert it computed (after
substitution) was missing, or had been brought by a prefetch and not used yet (what the prefetch saved it). The
gate reads only the plans' history, so it decides the same on any machine. `None`: every layer is predicted (the
paper). With an early prediction (`early`, `early-attention`) the engine still queues it in every layer; the gate
saves only its read and the prefetch.

Balancing costs: `costs="fixed"` (default) models a load as expert_bytes / `pcie_gbps` (by default the link the
run emulates, else 25 GB/s) and a CPU expert as expert_bytes / `cpu_gbps` (a memory-bound expert at low batch), so
decisions never depend on timing;
`costs="measured"` uses the runtime's rolling mean of the last `p` measured copies and CPU experts instead
(on a GPU run; the fixed values stand in until there are samples).
"""
from __future__ import annotations

import numpy as np

from smoe.balance import load_seconds, split_load_cpu
from smoe.caching import CachingPolicy
from smoe.errors import PolicyParamError
from smoe.plan import _CPU, _LOAD, _SKIP, _SUB, LayerView, Plan, PrefetchPlan
from smoe.policy import register_policy
from smoe.smoe_kernels import observe_ring, place_loads, place_prefetch, predicted_top, route_and_place, smoe_victims

_NO_FLAT = np.zeros(0, dtype=np.int64)  # no flat indices (no keys; `place_loads` without a victim search)

REPLACE_MODES = ("none", "substitute", "skip", "lower")
COST_MODES = ("fixed", "measured")
PREFETCH_MODES = ("none", "attention", "no-attention", "early", "early-attention")


@register_policy("score-lower", replace="lower")
@register_policy("skip", replace="skip")
@register_policy("smoe-early", replace="substitute", prefetch_mode="early", balance=True)
@register_policy("smoe", replace="substitute", prefetch_mode="attention", balance=True)
@register_policy("smoe-ce-cr-pre", replace="substitute", prefetch_mode="attention")
@register_policy("smoe-ce-cr-ba", replace="substitute", balance=True)
@register_policy("smoe-ce-cr", replace="substitute")
@register_policy("smoe-ce", replace="none")
class SMoE(CachingPolicy):
    alpha: float = 0.25  # substitution threshold (paper: 0.35 S1, 0.30 S2, 0.25 S3)
    window: int | None = 8  # n of Eq. 3 (forward passes); None: LRU eviction
    replace: str = "substitute"  # what happens to low-score experts: none | substitute | skip | lower
    lower: float = 0.5  # score factor of low-score experts for replace=lower
    balance: bool = False  # split missing experts between PCIe loads and the CPU (Alg. 2)
    prefetch_mode: str = "none"  # none | attention | no-attention | early | early-attention
    prefetch_share: float = 0.5  # most of the slots that prefetched, not yet used experts may hold
    prefetch_gate: int | None = None  # predict a layer only if it needed the link in its last n passes; None: always
    costs: str = "fixed"  # fixed | measured
    pcie_gbps: float | None = None  # fixed cost model: host->device rate; None: the run's emulated link, else 25 GB/s
    # (the paper's S3 A6000 on PCIe 4.0; `smoe.balance.load_seconds`)
    cpu_gbps: float = 20.0  # fixed cost model: rate at which the CPU streams an expert's weights
    p: int = 10  # measured costs: samples in the rolling mean

    def __post_init__(self):
        super().__post_init__()
        if self.replace not in REPLACE_MODES:
            raise PolicyParamError(f"replace={self.replace!r}; accepted: {', '.join(REPLACE_MODES)}")
        if self.prefetch_mode not in PREFETCH_MODES:
            raise PolicyParamError(f"prefetch_mode={self.prefetch_mode!r}; accepted: {', '.join(PREFETCH_MODES)}")
        if self.costs not in COST_MODES:
            raise PolicyParamError(f"costs={self.costs!r}; accepted: {', '.join(COST_MODES)}")
        if self.alpha < 0 or (self.window is not None and self.window < 1) or self.p < 1:
            raise PolicyParamError(f"need alpha >= 0, window >= 1 or None, p >= 1; got {self.alpha}, {self.window}, {self.p}")
        if (self.pcie_gbps is not None and not self.pcie_gbps > 0) or not self.cpu_gbps > 0:
            raise PolicyParamError(f"need pcie_gbps > 0 or None and cpu_gbps > 0; got {self.pcie_gbps}, {self.cpu_gbps}")
        if self.prefetch_gate is not None and self.prefetch_gate < 1:
            raise PolicyParamError(f"prefetch_gate={self.prefetch_gate!r}; accepted: an int >= 1 or None")
        # Eq. 3's window: each layer's last `window` per-pass mean scores in a ring, which the compiled victim search
        # (`smoe.smoe_kernels.smoe_victims`) averages for the candidates only, when a victim is chosen
        self.ring = np.zeros((0, 0, 0), dtype=np.float32)  # [L,window,E]
        self.passes = np.zeros(0, dtype=np.int64)  # [L] forward passes seen per layer
        # the prefetch threshold's factor in the predicted scores' precision (float32, as `predicted_top` takes them)
        self._factor = np.float32(1 + self.alpha)
        self.planned: dict[int, int] = {}  # layer -> forward passes planned (the prefetch gate's clock)
        self.needed_link: dict[int, int] = {}  # layer -> the last of them that needed the link (`_clock`)

    def _bind(self, model) -> None:
        if not self.layers:
            super()._bind(model)
            L, E = self.in_cache.shape
            self.ring = np.zeros((L, self.window or 0, E), dtype=np.float32)
            self.passes = np.zeros(L, dtype=np.int64)
            self._want = np.empty(E, dtype=np.int64)  # [E] the prefetch's wish list (`predicted_top`'s buffers)
            self._work = np.empty(2 * E + model.top_k + 1, dtype=np.float32)
            self._loads = np.empty(E, dtype=np.int64)  # [E] its loads and victims (`place_prefetch`'s buffers)
            self._evicted = np.empty(E, dtype=np.int64)
            self._dropped = np.empty(E, dtype=np.int64)  # [E] a plan's slots given up (`place_loads`' buffer)

    # ---- score-aware eviction ----------------------------------------------------------------------
    def eviction_rank(self, view: LayerView) -> tuple[np.ndarray, ...]:
        """The rule in numpy (what `victims` runs compiled): prefetched and unused last, then the windowed mean score
        (Eq. 3; a layer never seen has mean 0), then recency."""
        prefetched = np.zeros_like(self.in_cache)  # [L,E] brought by a prefetch and not used since
        for key in view.cache.prefetched():
            prefetched[self.at(key)] = True
        if self.window is None:
            return (prefetched, self.recency)
        seen = np.minimum(self.passes, self.window)[:, None]  # [L,1] passes in each ring
        means = np.divide(self.ring.sum(axis=1, dtype=np.float64), seen, out=np.zeros(self.in_cache.shape),
                          where=seen > 0)  # [L,E] (ring slots not yet written hold zeros and add nothing)
        return (prefetched, means, self.recency)

    def victims(self, view: LayerView, allowed: np.ndarray, wanted: int):
        """`CachingPolicy.victims` by `eviction_rank`, compiled (`smoe.smoe_kernels.smoe_victims`): at most `wanted`."""
        E = self.in_cache.shape[1]
        flat = smoe_victims(self.in_cache, allowed, self._flat(view.cache.prefetched()), self.ring, self.passes,
                            self.recency, wanted)
        return ((self.layers[f // E], f % E) for f in flat.tolist())

    def _flat(self, keys) -> np.ndarray:
        """[n] int64: the keys' flat indices (row * E + expert) in the [L,E] state (none: a kept empty array, as
        most calls at batch 1 have no prefetched expert waiting; read-only)."""
        if not keys:
            return _NO_FLAT
        E = self.in_cache.shape[1]
        return np.array([self.rows[k[0]] * E + k[1] for k in keys], dtype=np.int64)

    def observe(self, view: LayerView, plan: Plan) -> None:
        if self.window is None:
            return
        # the pass's mean scores into the layer's ring (`smoe.smoe_kernels.observe_ring`; plan has bound the rows)
        observe_ring(self.ring, self.passes, self.rows[view.layer], view.scores_np)

    # ---- planning --------------------------------------------------------------------------------------
    def _costs(self, view: LayerView) -> tuple[float, float]:
        c_load = load_seconds(view.model, self.pcie_gbps)
        c_cpu = view.model.expert_bytes / (self.cpu_gbps * 1e9)
        if self.costs == "measured" and view.costs is not None:
            loads, cpus = list(view.costs["load"])[-self.p:], list(view.costs["cpu"])[-self.p:]
            c_load = sum(loads) / len(loads) if loads else c_load
            c_cpu = sum(cpus) / len(cpus) if cpus else c_cpu
        return c_load, c_cpu

    def plan(self, view: LayerView) -> Plan:
        self._bind(view.model)
        layer = view.layer
        resident = view.cache.resident_mask(layer)  # [E] bool
        sel = view.topk_np  # [T,K]
        # The expert-cache router and where each computed expert comes from, compiled (`smoe.smoe_kernels`):
        # actions HIT / LOAD / SUB [T,K], stand-ins [T,K], the computed experts resident (hits, ascending) and missing
        # (best first); with nothing missing it also touches the hits in the policy's clock.
        substitute = self.replace in ("substitute", "skip")
        actions, standins, hits, missing, substituted = route_and_place(view.scores_np, sel, resident, self.alpha,
                                                                        substitute, self.recency, self.rows[layer],
                                                                        self.tick)
        if self.prefetch_gate is not None:
            self._clock(view, hits.tolist() + missing.tolist(), bool(len(missing)))
        if not len(missing):
            # every computed expert is resident: the kernel has touched them (what cache_plan does with hits only,
            # ascending), and there is no room to make
            self.tick += len(hits)
            if self._counts_hits:
                for e in hits.tolist():
                    self.on_hit((layer, e))
            if not substituted and self.replace != "lower":
                return Plan.hits()  # every routed expert is resident: nothing to replace, nothing to load
            evict, discard = [], set()
        else:
            missing_ids = missing.tolist()  # by best score over the batch, ties to the lower id
            load_ids, cpu_ids = missing_ids, []
            if self.balance:
                load_ids, cpu_ids = split_load_cpu(missing_ids, *self._costs(view))
            if cpu_ids:
                on_cpu = np.zeros(len(resident), dtype=bool)  # [E]
                on_cpu[cpu_ids] = True
                actions[(actions == _LOAD) & on_cpu[sel]] = _CPU  # [T,K]
            evict, discard = self._room(view, hits, np.sort(np.array(load_ids, dtype=np.int64)))
        if substituted and self.replace == "skip":
            actions[actions == _SUB] = _SKIP
        scale = self._lowered(view) if self.replace == "lower" and self.alpha > 0 else None
        return Plan(actions=actions, standins=standins if substituted and self.replace != "skip" else None,
                    evict=evict, discard=discard, scale=scale)

    def _room(self, view: LayerView, hits: np.ndarray, loads: np.ndarray) -> tuple[list, set[int]]:
        """`cache_plan` of the layer's resident experts `hits` and its `loads` (each ascending), compiled
        (`smoe.smoe_kernels.place_loads`): the clock touched and the loads inserted, and the (evict, discard) that make
        room for them."""
        layer = view.layer
        free = view.cache.capacity - len(self.cached)
        prefetched = self._flat(view.cache.prefetched()) if len(loads) > free else _NO_FLAT
        n = place_loads(hits, loads, self.rows[layer], free, self.in_cache, prefetched, self.ring, self.passes,
                        self.recency, self.born, self.tick, self._dropped)
        assert n >= 0, f"layer {layer}: no slot for its loads (capacity {view.cache.capacity})"
        self.tick += len(hits) + len(loads)
        if self._counts_hits:
            for e in hits.tolist():
                self.on_hit((layer, e))
        # the cached set and the subclass hooks, in the order `cache_plan` runs them
        E = self.in_cache.shape[1]
        evict: list = []
        discard: set[int] = set()
        into_free = len(loads) - n
        for j, e in enumerate(loads.tolist()):
            if j >= into_free:
                f = int(self._dropped[j - into_free])
                if f >= 0:
                    key = (self.layers[f // E], f % E)
                    evict.append(key)
                else:  # one of the layer's own experts, its slot reused once computed
                    key = (layer, (-1 - f) % E)
                    discard.add(key[1])
                self.cached.remove(key)
                self.on_evict(key)
            self.cached.add((layer, e))
            self.on_insert((layer, e))
        return evict, discard

    # ---- top-score prefetch ------------------------------------------------------------------------------
    @property
    def predictor_passes(self) -> int:
        return 0 if self.prefetch_mode == "none" else 1

    @property
    def early_prediction(self) -> bool:
        return self.prefetch_mode in ("early", "early-attention")

    @property
    def early_attention(self) -> bool:
        return self.prefetch_mode == "early-attention"

    def _clock(self, view: LayerView, computed: list[int], missing: bool) -> None:
        """The prefetch gate's history: count this pass of the layer, and note it if the layer needs the link: an
        expert it computes (after substitution) `missing`, or resident only through a prefetch that nothing has used
        yet (what the prefetch saved it)."""
        layer = view.layer
        n = self.planned[layer] = self.planned.get(layer, 0) + 1
        if missing or view.cache.any_prefetched(layer, computed):
            self.needed_link[layer] = n

    def gate_open(self, layer: int) -> bool:
        """Whether `prefetch` predicts `layer`: always without a gate, else if it needed the link in one of its
        last `prefetch_gate` passes (before its first pass: yes)."""
        if self.prefetch_gate is None or layer not in self.planned:
            return True
        return self.planned[layer] - self.needed_link.get(layer, -self.prefetch_gate) < self.prefetch_gate

    def prefetch(self, view: LayerView, ctx) -> PrefetchPlan | None:  # type: ignore[override]
        if self.prefetch_mode == "none" or view.phase != "decode":
            return None
        nxt = ctx.next_layer
        if nxt is None or not self.gate_open(nxt):
            return None
        self._bind(view.model)
        if self.early_prediction:
            scores = ctx.early()  # [T,E] predicted
        else:
            scores = ctx.predict(attention=self.prefetch_mode == "attention")
        # predicted top-score experts that are not resident, best first (`smoe.smoe_kernels.predicted_top`)
        n = predicted_top(scores, view.model.top_k, self._factor, view.cache.resident_mask(nxt), self._want, self._work)
        return self._placed(view, nxt, n) if n else None

    def _placed(self, view: LayerView, nxt: int, n: int) -> PrefetchPlan | None:
        """The prefetch of the wish list self._want[:n] (layer `nxt`'s experts, best first): `prefetch_plan` with the
        prefetched experts not yet used protected (never traded for other prefetches) and at most `prefetch_share` of
        the slots theirs, compiled (`smoe.smoe_kernels.place_prefetch`)."""
        prefetched = view.cache.prefetched()
        n = min(n, int(self.prefetch_share * view.cache.capacity) - len(prefetched))
        if n <= 0:
            return None
        free = view.cache.free_slots
        nl, nv = place_prefetch(self._want, n, self.rows[nxt], self.rows[view.layer], free, self.in_cache,
                                self._flat(prefetched), self.ring, self.passes, self.recency, self.born,
                                self.tick, self._loads, self._evicted)
        if not nl:
            return None
        self.tick += nl
        E = self.in_cache.shape[1]
        loads = [(nxt, e) for e in self._loads[:nl].tolist()]
        evict = [(self.layers[f // E], f % E) for f in self._evicted[:nv].tolist()]
        # the cached set and the subclass hooks, in the order `_drop` and `_insert` would have run them
        into_free = nl - nv
        for i, key in enumerate(loads):
            if i >= into_free:
                self.cached.remove(evict[i - into_free])
                self.on_evict(evict[i - into_free])
            self.cached.add(key)
            self.on_insert(key)
        return PrefetchPlan(loads=loads, evict=evict)

    def _lowered(self, view: LayerView) -> np.ndarray:
        """[T,K] factors: `lower` for low-score routed experts (score < (1+alpha) * S_{k+1}), else 1."""
        k = view.model.top_k
        kth1 = view.scores.topk(k + 1, dim=-1).values[:, k:k + 1]  # [T,1] the (k+1)-th score
        routed = view.scores.gather(1, view.topk)  # [T,K]
        low = (routed < (1 + self.alpha) * kth1).numpy()
        return np.where(low, self.lower, 1.0).astype(np.float32)
