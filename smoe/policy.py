"""The expert-policy interface and the policy registry.

Where it sits: the runtime (`engine.py`) owns the weights, the slots, the copies, CPU execution and every
metric; a policy only decides. It is called at four points:
  setup(model, capacity)      once, before the first forward: experts to preload into the slots
  plan(view) -> Plan          every MoE layer of every forward (the only hook a policy must implement)
  prefetch(view, ctx)         once a layer's resident experts are queued: experts of later layers to copy now
  observe(view, plan)         after the layer has been executed: update statistics (scores, recency)
Decisions must depend only on the inputs, the budget and the policy's parameters, never on timing.

Policies are dataclasses registered by name with `@register_policy(name, **preset)`; one class can be
registered under several names with different presets (the ablation steps of one algorithm).
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from collections.abc import Iterable

from typing import TYPE_CHECKING

from .errors import PolicyParamError, UnknownPolicy
from .plan import ExpertKey, LayerView, ModelInfo, Plan, PrefetchPlan

if TYPE_CHECKING:
    from .predict import PrefetchContext


class ExpertPolicy:
    """Base class of every expert policy. Subclasses are dataclasses whose fields are their parameters."""

    name: str = "?"  # the registered name this instance was made under (set by make_policy)

    def setup(self, model: ModelInfo, capacity: int) -> Iterable[ExpertKey]:
        """Experts to copy into the slots before the first forward (at most `capacity`)."""
        return ()

    def plan(self, view: LayerView) -> Plan:
        raise NotImplementedError

    def prefetch(self, view: LayerView, ctx: "PrefetchContext") -> PrefetchPlan | None:
        """Called once this layer's resident experts are queued and its loads are copying. `ctx` gives the
        layer's input and the next MoE layer's predicted scores. Return experts of later layers to load now."""
        return None

    def observe(self, view: LayerView, plan: Plan) -> None:
        """Called after the layer executed `plan`."""

    @property
    def predictor_passes(self) -> int:
        """Predictor passes `prefetch` runs per decode layer (what a cost model charges it)."""
        return 0

    @property
    def early_prediction(self) -> bool:
        """Whether `prefetch` reads `ctx.early()`: the engine then queues that prediction before it reads the
        layer's router scores (decode layers followed by a MoE layer)."""
        return False

    @property
    def early_attention(self) -> bool:
        """Whether that early prediction runs the next layer's attention (else its router alone)."""
        return False


# the lossless offloading baselines SMoE's TPOT is compared with in the GPU tables (its best is "the best baseline");
# a new offloading baseline joins here too
OFFLOADING_BASELINES = ("on-demand", "lru", "lfu", "fifo", "cpu-assist", "hybrimoe", "moe-infinity")


def base_policy(policy: str) -> str:
    """The registered name of a policy spec as run records give it: `hybrimoe:pcie_gbps=55` -> `hybrimoe`. Not
    `parse_policy_spec`, which refuses the run labels some records carry (`smoe@eager-predictor`): those are no
    baseline, and stay as they are."""
    return policy.split(":", 1)[0]


_REGISTRY: dict[str, tuple[type[ExpertPolicy], dict]] = {}
_DISCOVERED = False


def register_policy(name: str, **preset):
    """Class decorator: register a dataclass policy under `name`, with `preset` parameter values."""

    def wrap(cls):
        if not dataclasses.is_dataclass(cls):
            cls = dataclasses.dataclass(cls)
        if name in _REGISTRY and _REGISTRY[name][0].__qualname__ != cls.__qualname__:
            raise ValueError(f"policy name {name!r} is registered twice")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(preset) - fields
        if unknown:
            raise ValueError(f"preset of {name!r} sets unknown parameters {sorted(unknown)}")
        _REGISTRY[name] = (cls, dict(preset))
        return cls

    return wrap


def _discover() -> None:
    """Import every module of the `baselines` package and of `smoe.policies`, so their decorators run."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for pkg_name in ("baselines", "smoe.policies"):
        try:
            pkg = importlib.import_module(pkg_name)
        except ModuleNotFoundError as e:
            if e.name == pkg_name:
                continue
            raise
        for mod in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{pkg_name}.{mod.name}")


def policy_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def resolved_params(policy: ExpertPolicy) -> dict[str, object]:
    """Every parameter of a policy instance as it runs (defaults included), for run records: a default that
    changes later does not change what an old record says it ran with."""
    return {f.name: getattr(policy, f.name) for f in dataclasses.fields(policy) if f.init}


# Parameters that policies once took and no longer do, with the value at which a run behaved as today's code: run
# records list every resolved parameter, so a record made while one existed names it. SMoE's `prefetch_depth`
# (d071a8a and accd01b; measured in the thirty-eighth, thirty-ninth and forty-first campaigns; 1 is the paper's
# prefetch) and `balance_rule` (404ec14; measured in the forty-first; "paper" is Alg. 2) were taken out.
RETIRED_PARAMS: dict[str, dict[str, object]] = {"smoe": {"prefetch_depth": 1, "balance_rule": "paper"}}


def current_params(name: str, params: dict) -> dict:
    """A run record's resolved parameters for policy `name` -> those today's code takes: a retired parameter
    (`RETIRED_PARAMS`) at its neutral value is dropped; at any other value the run is not one today's code can
    stand for, and that is a `PolicyParamError`."""
    cls, _ = _lookup(name)
    retired = {}
    for base, ps in RETIRED_PARAMS.items():  # the policy registered as `base`, and every name of its class
        if issubclass(cls, _lookup(base)[0]):
            retired.update(ps)
    out = {}
    for k, v in params.items():
        if k in retired:
            if v != retired[k]:
                raise PolicyParamError(f"policy {name!r} ran with the retired parameter {k}={v!r}; today's code "
                                       f"stands only for {k}={retired[k]!r}")
            continue
        out[k] = v
    return out


def policy_params(name: str) -> dict[str, object]:
    """The parameters a policy takes, with their defaults after its preset."""
    cls, preset = _lookup(name)
    out = {f.name: f.default for f in dataclasses.fields(cls) if f.init}
    out.update(preset)
    return out


def _lookup(name: str) -> tuple[type[ExpertPolicy], dict]:
    _discover()
    if name not in _REGISTRY:
        raise UnknownPolicy(f"unknown policy {name!r}; known policies: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _coerce(name: str, field: dataclasses.Field, value, hints: dict):
    typ = hints.get(field.name, str)
    if not isinstance(value, str):
        return value
    origin = typing.get_origin(typ)
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        if value.lower() in ("none", "null"):
            return None
        typ = args[0]
    try:
        if typ is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ in (int, float, str):
            return typ(value)
    except ValueError:
        raise PolicyParamError(
            f"policy {name!r}: parameter {field.name}={value!r} is not a valid {getattr(typ, '__name__', typ)}"
        ) from None
    return value


def parse_policy_spec(spec: str) -> tuple[str, dict[str, str]]:
    """'smoe:prefetch_mode=no-attention,alpha=0.3' -> ('smoe', {'prefetch_mode': 'no-attention', 'alpha': '0.3'}):
    a registered policy with some parameters set, as one name for a sweep's command line and its tables."""
    name, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise PolicyParamError(f"policy spec {spec!r}: {item!r} is not NAME=VALUE")
        params[key] = value
    _lookup(name)
    return name, params


def make_policy(name: str, **params) -> ExpertPolicy:
    """Instantiate the policy registered as `name`; string values (from the CLI) are converted."""
    cls, preset = _lookup(name)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        accepted = ", ".join(sorted(fields)) or "none"
        raise PolicyParamError(f"policy {name!r} takes no parameter {', '.join(unknown)}; accepted: {accepted}")
    hints = typing.get_type_hints(cls)
    kwargs = dict(preset)
    kwargs.update({k: _coerce(name, fields[k], v, hints) for k, v in params.items()})
    policy = cls(**kwargs)
    policy.name = name
    return policy
