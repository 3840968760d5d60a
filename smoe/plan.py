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

from . import plan_kernels as pk
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
    """Static facts about the MoE model, and the run's host->device link, a policy may use."""

    moe_layers: tuple[int, ...]  # decoder layer indices that hold routed experts
    num_experts: int  # E, routed experts per MoE layer
    top_k: int  # K, the family router's experts per token
    expert_bytes: int  # bytes of one routed expert (gate+up+down)
    model_type: str
    link_gbps: float | None = None  # the host->device rate the run emulates (GB/s), a fact of the setting like the
    # budget, not a timing; None: the machine's own link, which cost-modelling policies take from their parameter


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

    def resident_mask(self, layer: int) -> np.ndarray:
        """[E] bool: `resident(layer)` as an array (the pool's own, kept up to date: read-only)."""
        return self._pool.layer_mask(layer)

    def is_resident(self, key: ExpertKey) -> bool:
        return key in self._pool.slot_of

    def keys(self) -> list[ExpertKey]:
        return list(self._pool.slot_of)

    def prefetched(self) -> frozenset[ExpertKey]:
        """Experts brought in by a prefetch and not used since."""
        return frozenset(self._pool.prefetched)

    def any_prefetched(self, layer: int, experts) -> bool:
        """Whether any of `experts` of `layer` was brought in by a prefetch and not used since (no copy of the set)."""
        pool = self._pool.prefetched
        return bool(pool) and any((layer, e) in pool for e in experts)


class _once:
    """A property computed on first read and then kept in the instance (functools.cached_property without its
    lock, which Python 3.11 takes on every first read: a decode layer reads several of these once each)."""

    def __init__(self, fn):
        self.fn, self.name = fn, fn.__name__
        self.__doc__ = fn.__doc__

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value


@dataclass
class LayerView:
    """What a policy sees when it plans one MoE layer of one forward pass."""

    layer: int
    phase: str  # "prefill" | "decode"
    step: int  # forward pass: 0 is the prefill, then 1, 2, ... decode steps
    scores_np: np.ndarray  # [T,E] float32: the family router's scores (softmax or sigmoid); read-only by convention
    topk_np: np.ndarray  # [T,K] int64: the family router's choice; read-only by convention
    cache: CacheView
    model: ModelInfo
    costs: dict | None = None  # "load"/"cpu" -> recent measured seconds per expert (newest last), GPU runs only

    @_once
    def routed(self) -> list[list[int]]:
        """[T][K] the router's choice as Python ints: converted once per layer, shared by the policy and the
        runtime's check of its plan."""
        return self.topk_np.tolist()

    @_once
    def scores(self) -> torch.Tensor:
        """[T,E] float32 on the CPU: `scores_np` as a tensor sharing its memory (made on first read: the runtime reads
        the router back into arrays, and a policy planning with numpy never pays for a tensor)."""
        return torch.from_numpy(self.scores_np)

    @_once
    def topk(self) -> torch.Tensor:
        """[T,K] int64 on the CPU: `topk_np` as a tensor sharing its memory (made on first read)."""
        return torch.from_numpy(self.topk_np)

    def needed(self) -> list[int]:
        """Distinct routed experts of this layer, ascending."""
        return sorted(set().union(*self.routed))

    def mean_scores(self) -> np.ndarray:
        """[E] float32: each expert's router score averaged over this forward's tokens (as np.mean, without its
        per-call cost); read-only (at batch 1 it is the scores' own row)."""
        scores = self.scores_np  # [T,E]
        if len(scores) == 1:  # a batch-1 decode step: the row is its own mean
            return scores[0]
        return np.add.reduce(scores, axis=0) / len(scores)


@dataclass
class Plan:
    actions: np.ndarray | None  # [T,K] Action codes, one per (token, routed expert); None: HIT everywhere (`hits`)
    standins: np.ndarray | None = None  # [T,K] stand-in expert where SUBSTITUTE, else -1
    evict: list[ExpertKey] = field(default_factory=list)
    discard: set[int] = field(default_factory=set)
    scale: np.ndarray | None = None  # [T,K] factors on the router scores of routed experts (1 = unchanged)

    @classmethod
    def hits(cls, evict: Iterable[ExpertKey] = (), discard: Iterable[int] = ()) -> "Plan":
        """A plan where every (token, routed expert) is a HIT (every layer of the floor; a caching policy's layers whose
        routed experts are all resident), which `check_plan` checks without building the [T,K] codes (`actions` None)."""
        return cls(actions=None, evict=list(evict), discard=set(discard))

    @classmethod
    def per_expert(
        cls,
        view: LayerView,
        placement: Mapping[int, Action],
        evict: Iterable[ExpertKey] = (),
        discard: Iterable[int] = (),
    ) -> "Plan":
        """A plan where every token that routes to expert e gets `placement[e]` (no substitution)."""
        if all(a == _HIT for a in placement.values()) and all(e in placement for row in view.routed for e in row):
            return cls.hits(evict, discard)
        lut = np.full(view.model.num_experts, -1, dtype=np.int8)
        for e, a in placement.items():
            lut[e] = int(a)
        actions = lut[view.topk_np]
        return cls(actions=actions, evict=list(evict), discard=set(discard))


@dataclass(frozen=True)
class PrefetchPlan:
    """Experts of a later layer to copy now, and the resident experts whose slots they take."""

    loads: list[ExpertKey]
    evict: list[ExpertKey] = field(default_factory=list)


@dataclass
class ExecPlan:
    """A checked plan, in the form the engine executes. The computed experts come as flat lists (what the compiled
    check hands back, read by the engine without building a dict per layer); `where` and `tokens` are their dict
    views, for readers outside the decode loop."""

    experts: list[int]  # the computed experts, ascending
    codes: list[int]  # each one's Action code: HIT (resident), LOAD or CPU
    starts: list[int]  # [len(experts)+1]: experts[i] is computed by the token rows rows[starts[i]:starts[i+1]] ...
    rows: list[int]  # ... in HF's (rank, token) order
    changed: list[int]  # tokens whose computed set or scores differ from the router's: family weight rule
    changed_mask: np.ndarray | None  # [len(changed),E] bool: the experts each changed token computes (None: none changed)
    scale: np.ndarray | None  # [T,E] score factors, or None
    loads: list[int]  # experts copied this layer, ascending
    evict: list[ExpertKey]
    discard: set[int]
    substitutions: int
    skips: int

    def token_rows(self, i: int) -> list[int]:
        """The token rows that compute experts[i]."""
        return self.rows[self.starts[i]:self.starts[i + 1]]

    @property
    def where(self) -> dict[int, Action]:
        """expert -> HIT, LOAD or CPU."""
        return dict(zip(self.experts, map(_ACTIONS.__getitem__, self.codes)))

    @property
    def tokens(self) -> dict[int, list[int]]:
        """expert -> its token rows, in HF's order."""
        return {e: self.token_rows(i) for i, e in enumerate(self.experts)}


_ACTIONS = tuple(Action)  # code -> Action, without the Enum call's cost
# Action codes as plain ints: cheaper to compare, and [T][K] lists of them convert to an array faster than enum members
_HIT, _LOAD, _CPU, _SUB, _SKIP = (int(a) for a in Action)
assert (pk.HIT, pk.LOAD, pk.CPU, pk.SUB, pk.SKIP) == (_HIT, _LOAD, _CPU, _SUB, _SKIP)
_NO_STANDINS = np.zeros((0, 0), dtype=np.int64)  # `walk_plan`'s "no stand-ins given"
_NO_TOKENS = np.zeros(0, dtype=bool)  # `walk_plan`'s "no token forced to count as changed"


def _fail(policy: str, layer: int, msg: str) -> PolicyError:
    return PolicyError(f"policy {policy!r}, layer {layer}: {msg}")


def check_plan(plan: Plan, view: LayerView, policy: str) -> ExecPlan:
    """Validate `plan` against the cache and derive what the engine needs; raises PolicyError.

    Runs for every MoE layer of every forward: an all-HIT plan in a few set operations (`_check_hits`), any other in
    one compiled walk over its (token, expert) pairs (`smoe.plan_kernels.walk_plan`)."""
    layer = view.layer
    if plan.actions is None and plan.scale is None and plan.standins is None:
        return _check_hits(plan, view, policy, view.routed, view.cache.resident(layer))
    T, K = view.topk_np.shape
    E = view.model.num_experts
    if plan.actions is None:
        actions = np.zeros((T, K), dtype=np.int8)  # HIT everywhere
    else:
        actions = plan.actions if isinstance(plan.actions, np.ndarray) else np.asarray(plan.actions)
        if actions.shape != (T, K):
            raise _fail(policy, layer, f"actions have shape {actions.shape}, expected {(T, K)} (tokens, top-k)")
        if actions.dtype.kind not in "iu":
            raise _fail(policy, layer, "actions must be integer Action codes")
        if actions.dtype != np.int8:  # the walk takes int8 codes (as the policies make them) or int64
            actions = actions.astype(np.int64, copy=False)
    stands = _NO_STANDINS
    if plan.standins is not None:
        stands = np.asarray(plan.standins)
        if stands.shape != (T, K):
            raise _fail(policy, layer, f"standins have shape {stands.shape}, expected {(T, K)} (tokens, top-k)")
        if stands.dtype.kind not in "iu":
            raise _fail(policy, layer, "standins must be integer expert ids")
        if stands.dtype != np.int64:
            stands = stands.astype(np.int64)
    scale = None
    forced = _NO_TOKENS  # tokens whose scores the plan scales
    if plan.scale is not None:
        factors = np.asarray(plan.scale, dtype=np.float32)
        if factors.shape != (T, K) or not (factors >= 0).all():
            raise _fail(policy, layer, f"scale must be non-negative factors of shape {(T, K)}")
        scale = np.ones((T, E), dtype=np.float32)
        np.put_along_axis(scale, view.topk_np, factors, axis=1)
        forced = (scale != 1).any(axis=1)
    out, changed_mask = pk.walk_plan(actions, stands, view.topk_np, view.cache.resident_mask(layer), forced, E)
    v = out.tolist()
    if v[pk.ERR]:
        raise _fail(policy, layer, _walk_error(v[pk.ERR], v[pk.AT_T], v[pk.AT_J], v[pk.AT_X], actions, view.topk_np))
    m, n, c = v[pk.N_EXPERTS], v[pk.N_ROWS], v[pk.N_CHANGED]
    p = pk.HEAD
    ids, codes, bounds = v[p:p + m], v[p + m:p + 2 * m], v[p + 2 * m:p + 3 * m + 1]
    p += 3 * m + 1
    rows, changed, loads = v[p:p + n], v[p + n:p + n + c], v[p + n + c:]

    evict: list[ExpertKey] = []
    discard: set[int] = set()
    if plan.evict or plan.discard:
        used_on_device = {e for e, a in zip(ids, codes) if a != _CPU}
        evict, discard = _checked_frees(plan, view, policy, used_on_device)
        if loads:
            hits = {e for e, a in zip(ids, codes) if a == _HIT}
            _check_slots(loads, hits, evict, discard, view, policy)
    elif loads:
        _check_slots(loads, (), evict, discard, view, policy)
    return ExecPlan(
        experts=ids,
        codes=codes,
        starts=bounds,
        rows=rows,
        changed=changed,
        changed_mask=changed_mask if c else None,
        scale=scale,
        loads=loads,
        evict=evict,
        discard=discard,
        substitutions=v[pk.SUBS],
        skips=v[pk.SKIPS],
    )


def _check_hits(plan: Plan, view: LayerView, policy: str, experts: list[list[int]], resident) -> ExecPlan:
    """`check_plan` of a plan that makes every routed expert a HIT (`Plan.hits`): each must be resident. The token
    rows go in HF's order (by top-k rank, then token); a router's top-k names distinct experts, so no token computes
    one twice."""
    if len(experts) == 1:  # a batch-1 decode step
        ids = sorted(experts[0])
        m = len(ids)
        starts, rows = list(range(m + 1)), [0] * m
    else:
        tokens: dict[int, list[int]] = {}
        for j in range(len(experts[0])):
            for t, row in enumerate(experts):
                tokens.setdefault(row[j], []).append(t)
        ids = sorted(tokens)
        m = len(ids)
        starts, rows = [0], []
        for e in ids:
            rows += tokens[e]
            starts.append(len(rows))
    if not resident.issuperset(ids):
        e = min(set(ids) - resident)
        raise _fail(policy, view.layer, f"HIT for expert {e}, which is not resident")
    evict: list[ExpertKey] = []
    discard: set[int] = set()
    if plan.evict or plan.discard:
        evict, discard = _checked_frees(plan, view, policy, set(ids))
    return ExecPlan(experts=ids, codes=[_HIT] * m, starts=starts, rows=rows, changed=[], changed_mask=None, scale=None,
                    loads=[], evict=evict, discard=discard, substitutions=0, skips=0)


def _walk_error(code: int, t: int, j: int, x: int, acts: np.ndarray, topk: np.ndarray) -> str:
    """The message of `walk_plan`'s error `code` at token t's rank-j pair (x: see `walk_plan`)."""
    if code == pk.NO_ACTION:
        return "every routed expert needs an action (HIT, LOAD, CPU, SUBSTITUTE or SKIP)"
    if code == pk.UNSERVED_STANDIN:
        return f"stand-in {x} for token {t} is not resident and no token loads or CPU-runs it"
    e, a = int(topk[t, j]), int(acts[t, j])
    if code == pk.BAD_STANDIN:
        return f"token {t} substitutes expert {e} with invalid stand-in {x}"
    if code == pk.HIT_MISSING:
        return f"HIT for expert {e}, which is not resident"
    if code == pk.RESIDENT_NOT_HIT:
        return f"{Action(a).name} for expert {e}, which is already resident (use HIT)"
    if code == pk.TWO_ACTIONS:
        return f"expert {e} is both {Action(x).name} and {Action(a).name} in one layer"
    assert code == pk.TWICE, code
    return f"token {t} would compute expert {x} twice"


def _checked_frees(plan: Plan, view: LayerView, policy: str, used_on_device: set[int]):
    """The plan's evict list and discard set, checked: resident, distinct, never an expert the layer computes."""
    layer = view.layer
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
    return evict, discard


def _check_slots(loads: list[int], hits, evict, discard, view: LayerView, policy: str) -> None:
    """Slot feasibility, in the engine's order: resident experts (`hits`) compute first, then loads in id order;
    a discarded expert's slot is reusable once it has been computed."""
    avail = view.cache.free_slots + len(evict)
    reusable = sum(1 for e in discard if e in hits)
    for e in loads:
        if avail > 0:
            avail -= 1
        elif reusable > 0:
            reusable -= 1
        else:
            raise _fail(
                policy,
                view.layer,
                f"{len(loads)} loads need slots, but only {view.cache.free_slots} are free, {len(evict)} "
                "evicted and too few discarded after use",
            )
        if e in discard:
            reusable += 1
