"""Plans: what a policy decides for one MoE layer, and the runtime's check that it can be executed.

Where it sits: `policy.plan(view)` returns a `Plan`; `check_plan` validates it against the cache and turns
it into an `ExecPlan` (which expert runs where, for which tokens, with which gate weights) that
`engine.py` executes. Nothing here touches a device or a clock, so the same inputs give the same plan
on a CPU-only machine and on a GPU.

A plan gives one `Action` per (token, routed expert) of the family router's top-k:
  HIT        the expert is resident (or its prefetch is queued): computed on the device from its slot
  LOAD       copied host->device into a slot this layer, then computed on the device
  CPU        computed on the CPU from the host store, result sent to the device
  SUBSTITUTE the token computes a stand-in expert instead, where that expert runs in this layer (resident, or
             loaded or CPU-run for another token of the batch)
  SKIP       the token drops the expert
plus `evict` (resident experts whose slots are freed before this layer's loads) and `discard` (experts of
this layer whose slots are freed once they have been computed: streaming loads, no-cache policies).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import torch

from .errors import PolicyError

ExpertKey = tuple[int, int]  # (decoder layer index, expert id)


class Action(IntEnum):
    HIT = 0
    LOAD = 1
    CPU = 2
    SUBSTITUTE = 3
    SKIP = 4


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about the MoE model a policy may use."""

    moe_layers: tuple[int, ...]  # decoder layer indices that hold routed experts
    num_experts: int  # E, routed experts per MoE layer
    top_k: int  # K, the family router's experts per token
    expert_bytes: int  # bytes of one routed expert (gate+up+down)
    model_type: str


class CacheView:
    """Read-only view of the device slot pool for policies (an expert whose prefetch is queued counts
    as resident)."""

    def __init__(self, pool):
        self._pool = pool

    @property
    def capacity(self) -> int:
        return self._pool.capacity

    @property
    def free_slots(self) -> int:
        return self._pool.free_slots

    def resident(self, layer: int) -> frozenset[int]:
        return frozenset(self._pool.by_layer.get(layer, ()))

    def is_resident(self, key: ExpertKey) -> bool:
        return key in self._pool.slot_of

    def keys(self) -> list[ExpertKey]:
        return list(self._pool.slot_of)

    def prefetched(self) -> frozenset[ExpertKey]:
        """Experts brought in by a prefetch and not used since."""
        return frozenset(self._pool.prefetched)


@dataclass
class LayerView:
    """What a policy sees when it plans one MoE layer of one forward pass."""

    layer: int
    phase: str  # "prefill" | "decode"
    step: int  # forward pass: 0 is the prefill, then 1, 2, ... decode steps
    scores: torch.Tensor  # [T,E] float32 on the CPU: the family router's scores (softmax or sigmoid)
    topk: torch.Tensor  # [T,K] int64 on the CPU: the family router's choice
    cache: CacheView
    model: ModelInfo
    costs: dict | None = None  # "load"/"cpu" -> recent measured seconds per expert (newest last), GPU runs only

    def needed(self) -> list[int]:
        """Distinct routed experts of this layer, ascending."""
        return sorted(set(self.topk.flatten().tolist()))


@dataclass
class Plan:
    actions: np.ndarray  # [T,K] Action codes, one per (token, routed expert)
    standins: np.ndarray | None = None  # [T,K] stand-in expert where SUBSTITUTE, else -1
    evict: list[ExpertKey] = field(default_factory=list)
    discard: set[int] = field(default_factory=set)
    scale: np.ndarray | None = None  # [T,K] factors on the router scores of routed experts (1 = unchanged)

    @classmethod
    def per_expert(
        cls,
        view: LayerView,
        placement: Mapping[int, Action],
        evict: Iterable[ExpertKey] = (),
        discard: Iterable[int] = (),
    ) -> "Plan":
        """A plan where every token that routes to expert e gets `placement[e]` (no substitution)."""
        lut = np.full(view.model.num_experts, -1, dtype=np.int8)
        for e, a in placement.items():
            lut[e] = int(a)
        actions = lut[view.topk.numpy()]
        return cls(actions=actions, evict=list(evict), discard=set(discard))


@dataclass(frozen=True)
class PrefetchPlan:
    """Experts of a later layer to copy now, and the resident experts whose slots they take."""

    loads: list[ExpertKey]
    evict: list[ExpertKey] = field(default_factory=list)


@dataclass
class ExecPlan:
    """A checked plan, in the form the engine executes."""

    where: dict[int, Action]  # expert -> HIT (resident), LOAD or CPU
    tokens: dict[int, list[int]]  # expert -> token rows that compute it, in HF's (rank, token) order
    computed: np.ndarray  # [T,E] bool: experts each token computes
    changed: list[int]  # tokens whose computed set or scores differ from the router's: family weight rule
    scale: np.ndarray | None  # [T,E] score factors, or None
    loads: list[int]  # experts copied this layer, ascending
    evict: list[ExpertKey]
    discard: set[int]
    substitutions: int
    skips: int


_ACTIONS = tuple(Action)  # code -> Action, without the Enum call's cost
_HIT, _CPU, _SUB, _SKIP = int(Action.HIT), int(Action.CPU), int(Action.SUBSTITUTE), int(Action.SKIP)


def _fail(policy: str, layer: int, msg: str) -> PolicyError:
    return PolicyError(f"policy {policy!r}, layer {layer}: {msg}")


def check_plan(plan: Plan, view: LayerView, policy: str) -> ExecPlan:
    """Validate `plan` against the cache and derive what the engine needs; raises PolicyError."""
    topk = view.topk.numpy()  # [T,K]
    T, K = topk.shape
    E = view.model.num_experts
    layer = view.layer
    resident = view.cache.resident(layer)
    actions = np.asarray(plan.actions)
    if actions.shape != (T, K):
        raise _fail(policy, layer, f"actions have shape {actions.shape}, expected {(T, K)} (tokens, top-k)")
    if actions.size and (actions.dtype.kind not in "iu" or actions.min() < 0 or actions.max() >= len(_ACTIONS)):
        raise _fail(policy, layer, "every routed expert needs an action (HIT, LOAD, CPU, SUBSTITUTE or SKIP)")
    standins = np.asarray(plan.standins) if plan.standins is not None else np.full((T, K), -1)
    if standins.shape != (T, K):
        raise _fail(policy, layer, f"standins have shape {standins.shape}, expected {(T, K)} (tokens, top-k)")
    # plain Python lists and int codes from here: this runs for every MoE layer of every decode step
    acts, experts, stands = actions.tolist(), topk.tolist(), standins.tolist()
    HIT, CPU, SUB, SKIP = _HIT, _CPU, _SUB, _SKIP

    where: dict[int, Action] = {}
    for t in range(T):
        for j in range(K):
            a = acts[t][j]
            if a > CPU:  # SUBSTITUTE, SKIP
                continue
            e = experts[t][j]
            if a == HIT and e not in resident:
                raise _fail(policy, layer, f"HIT for expert {e}, which is not resident")
            if a != HIT and e in resident:
                raise _fail(policy, layer, f"{Action(a).name} for expert {e}, which is already resident (use HIT)")
            if where.setdefault(e, _ACTIONS[a]) != a:
                raise _fail(policy, layer, f"expert {e} is both {where[e].name} and {Action(a).name} in one layer")
    tokens: dict[int, list[int]] = {}
    computed = [set() for _ in range(T)]
    subs = skips = 0
    for j in range(K):  # HF's order: by top-k rank, then token
        for t in range(T):
            a = acts[t][j]
            if a == SKIP:
                skips += 1
                continue
            e = experts[t][j]
            if a == SUB:
                s = stands[t][j]
                if not 0 <= s < E:
                    raise _fail(policy, layer, f"token {t} substitutes expert {e} with invalid stand-in {s}")
                if s in resident:
                    where.setdefault(s, Action.HIT)
                elif s not in where:
                    raise _fail(
                        policy, layer, f"stand-in {s} for token {t} is not resident and no token loads or CPU-runs it"
                    )
                subs += 1
                e = s
            if e in computed[t]:
                raise _fail(policy, layer, f"token {t} would compute expert {e} twice")
            computed[t].add(e)
            tokens.setdefault(e, []).append(t)
    scale = None
    if plan.scale is not None:
        factors = np.asarray(plan.scale, dtype=np.float32)
        if factors.shape != (T, K) or not (factors >= 0).all():
            raise _fail(policy, layer, f"scale must be non-negative factors of shape {(T, K)}")
        scale = np.ones((T, E), dtype=np.float32)
        np.put_along_axis(scale, topk, factors, axis=1)
    changed = [
        t for t in range(T)
        if computed[t] != set(experts[t]) or (scale is not None and (scale[t] != 1).any())
    ]
    computed_mask = np.zeros((T, E), dtype=bool)
    computed_mask[[t for t, es in enumerate(computed) for _ in es], [e for es in computed for e in es]] = True

    used_on_device = {e for e, a in where.items() if a != Action.CPU and e in tokens}
    try:
        evict = [(int(key[0]), int(key[1])) for key in plan.evict]
    except (TypeError, ValueError, IndexError):
        raise _fail(policy, layer, f"evict must list (layer, expert) pairs, got {plan.evict!r}") from None
    if len(set(evict)) != len(evict):
        raise _fail(policy, layer, "an expert is evicted twice")
    for key in evict:
        if not view.cache.is_resident(key):
            raise _fail(policy, layer, f"evicts {key}, which is not resident")
        if key[0] == layer and key[1] in used_on_device:
            raise _fail(policy, layer, f"evicts expert {key[1]}, which this layer computes (shielded)")
    discard = set(plan.discard)
    for e in discard:
        if e not in used_on_device:
            raise _fail(policy, layer, f"discards expert {e}, which this layer does not compute on the device")

    loads = sorted(e for e, a in where.items() if a == Action.LOAD)
    # Slot feasibility, in the engine's order: resident experts compute first, then loads in id order;
    # a discarded expert's slot is reusable once it has been computed.
    avail = view.cache.free_slots + len(evict)
    reusable = sum(1 for e in discard if where[e] == Action.HIT)
    for e in loads:
        if avail > 0:
            avail -= 1
        elif reusable > 0:
            reusable -= 1
        else:
            raise _fail(
                policy,
                layer,
                f"{len(loads)} loads need slots, but only {view.cache.free_slots} are free, {len(evict)} "
                "evicted and too few discarded after use",
            )
        if e in discard:
            reusable += 1
    return ExecPlan(
        where={e: a for e, a in where.items() if e in tokens or a == Action.LOAD},
        tokens=tokens,
        computed=computed_mask,
        changed=changed,
        scale=scale,
        loads=loads,
        evict=evict,
        discard=discard,
        substitutions=subs,
        skips=skips,
    )
