"""The contract every registered policy must meet (a new policy gets these tests by being registered):
it instantiates by name, runs a batched generation at a large and at the smallest cache, produces tokens of
the right shape, reports every metric with consistent values, and is deterministic. Plus the registry's
errors."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from smoe.errors import BudgetError, PolicyParamError, UnknownPolicy
from smoe.plan import Action
from smoe.policy import RETIRED_PARAMS, ExpertPolicy, current_params, make_policy, policy_names, policy_params
from smoe.runtime import Runtime
from smoe.tiny import VOCAB
from smoe_test_support import METRIC_KEYS, PHASE_KEYS, PROMPTS

# Test-only policies (registered by other test modules, e.g. deliberately broken ones) are not part of the contract.
POLICIES = [n for n in policy_names() if not n.startswith("test-")]
FAMILIES = ["qwen2_moe", "deepseek_v3"]  # softmax with a shared expert at layers 0-2 / sigmoid, MoE from layer 1
N = 8
BATCH = len(PROMPTS)
MIN_SLOTS = 4  # top_k 2 x batch 2
BIG = 1000
NEEDS_ALL_EXPERTS = {"all-gpu"}


def test_registry_lists_the_baselines():
    assert {"all-gpu", "lru", "on-demand", "cpu-assist"} <= set(POLICIES)
    assert policy_names() == sorted(policy_names())


@pytest.fixture(scope="module")
def lru_traces(tiny, tmp_path_factory):
    """family -> a trace of this module's run (lru keeps the router's choice), for policies that replay one."""
    out = {}
    for family in FAMILIES:
        rt = Runtime(tiny(family), "lru", device="cpu", cache_experts=BIG, batch=BATCH, trace=True)
        try:
            rt.generate(PROMPTS, N)
            path = tmp_path_factory.mktemp("trace") / f"{family}.pt"
            torch.save({"model": str(tiny(family)), "policy": "lru", "records": rt.engine.trace}, path)
        finally:
            rt.close()
        out[family] = str(path)
    return out


def required_params(name: str, family: str, lru_traces) -> dict:
    """Parameters without which a policy cannot run at all (it refuses to with PolicyParamError)."""
    if name == "belady":
        return {"trace": lru_traces[family]}
    return {}


def run(tiny, family, name, slots, params, trace=False):
    rt = Runtime(tiny(family), name, device="cpu", cache_experts=slots, batch=BATCH, policy_params=params,
                 trace=trace)
    try:
        ids, _ = rt.encode(PROMPTS)
        res = rt.generate(PROMPTS, N)
        records = list(rt.engine.trace) if trace else None
    finally:
        rt.close()
    return rt, ids.shape[1], res, records


@pytest.mark.parametrize("name", POLICIES)
def test_instantiates_by_name(name):
    pol = make_policy(name)
    assert isinstance(pol, ExpertPolicy)
    assert pol.name == name
    fields = {f.name for f in dataclasses.fields(pol) if f.init}
    params = policy_params(name)
    assert set(params) == fields
    for k, v in params.items():  # the preset and defaults are what the instance holds
        assert getattr(pol, k) == v


def test_a_record_with_a_retired_parameter_stands_for_todays_policy_only_at_its_neutral_value(monkeypatch):
    """Run records list every resolved parameter: one made while a policy took a parameter it no longer takes names
    it (here a made-up SMoE parameter `old_knob`, retired at 1)."""
    for base, params in RETIRED_PARAMS.items():  # retired means no longer taken
        assert not set(params) & set(policy_params(base))
    monkeypatch.setattr("smoe.policy.RETIRED_PARAMS", {"smoe": {"old_knob": 1}})
    recorded = {**policy_params("smoe"), "old_knob": 1}
    assert current_params("smoe", recorded) == policy_params("smoe")
    assert current_params("smoe-early", {"old_knob": 1, "alpha": 0.3}) == {"alpha": 0.3}  # any name of the class
    with pytest.raises(PolicyParamError, match="retired parameter old_knob=2"):
        current_params("smoe", {**recorded, "old_knob": 2})
    with pytest.raises(PolicyParamError, match="takes no parameter old_knob"):
        make_policy("lru", **current_params("lru", {"old_knob": 1}))  # not SMoE's: not dropped


@pytest.mark.parametrize("slots", ["big", "min"])
@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("family", FAMILIES)
def test_policy_contract(family, name, slots, tiny, lru_traces):
    cache = BIG if slots == "big" else MIN_SLOTS
    params = required_params(name, family, lru_traces)
    if slots == "min" and name in NEEDS_ALL_EXPERTS:
        with pytest.raises(BudgetError):
            Runtime(tiny(family), name, device="cpu", cache_experts=cache, batch=BATCH, policy_params=params)
        return
    rt, S, res, records = run(tiny, family, name, cache, params, trace=True)
    info = rt.info
    L, K = len(info.moe_layers), info.top_k

    # tokens: B lists of N ids of the vocabulary
    assert len(res.tokens) == BATCH and all(len(t) == N for t in res.tokens)
    assert all(isinstance(x, int) and 0 <= x < VOCAB for t in res.tokens for x in t)

    m = res.metrics
    prefetching = type(rt.policy).prefetch is not ExpertPolicy.prefetch  # as the engine decides to ask
    assert METRIC_KEYS <= set(m), f"missing metrics {sorted(METRIC_KEYS - set(m))}"
    for phase in ("prefill", "decode"):
        assert PHASE_KEYS <= set(m[phase]), f"missing {phase} counters {sorted(PHASE_KEYS - set(m[phase]))}"
    assert m["hit_rate"] is not None and 0.0 <= m["hit_rate"] <= 1.0
    assert m["decode"]["uses"] > 0
    assert m["hit_rate"] == pytest.approx(m["decode"]["hits"] / m["decode"]["uses"])
    assert m["decode_steps"] == N - 1
    assert m["ttft_s"] > 0 and m["tpot_s"] > 0 and m["tpot_p50_s"] <= m["tpot_p90_s"]
    assert 0 < m["queue_s"] <= m["tpot_s"]  # the host's part of each step is part of it
    assert m["copy_wait_s"] == 0 and m["victim_wait_s"] == 0  # measured by CUDA events: none on a CPU
    assert m["peak_device_bytes"] > 0
    # copies and their bytes agree, in total and per phase
    assert m["loads"] * info.expert_bytes == m["bytes_h2d"]
    for phase in ("prefill", "decode"):
        c = m[phase]
        assert c["loads"] * info.expert_bytes == c["bytes_h2d"]
        assert 0 <= c["hits"] <= c["uses"]
        assert 0 <= c["prefetch_used"] <= c["prefetches"] <= c["loads"]
        assert 0 < c["check_time_s"] < c["policy_time_s"]  # every layer's plan is checked, inside the decision time
        # the prefetch decisions are a part of it besides the plans, and only a policy that prefetches makes them
        assert 0 <= c["prefetch_time_s"] < c["policy_time_s"] - c["check_time_s"]
        if not prefetching:
            assert c["prefetch_time_s"] == 0, phase
        if c["prefetches"]:  # a prefetch was decided, and timed
            assert c["prefetch_time_s"] > 0, phase
    for key in ("loads", "bytes_h2d", "cpu_experts", "substitutions", "skips", "prefetches", "prefetch_used"):
        assert m[key] == m["prefill"][key] + m["decode"][key], key
    # every (token, routed expert) of every MoE layer is either computed (possibly by a stand-in) or skipped
    assert m["prefill"]["uses"] + m["prefill"]["skips"] == BATCH * S * L * K
    assert m["decode"]["uses"] + m["decode"]["skips"] == BATCH * (N - 1) * L * K
    assert m["preload_loads"] <= rt.memory.capacity

    # the trace agrees with the counters
    assert len(records) == N * L
    actions = torch.cat([r["actions"].flatten() for r in records])
    assert int((actions == Action.SKIP).sum()) == m["skips"]
    assert int((actions == Action.SUBSTITUTE).sum()) == m["substitutions"]
    assert sum(len(r["loads"]) for r in records) + m["prefetches"] == m["loads"]
    assert sum(len(r["cpu"]) for r in records) == m["cpu_experts"]

    # determinism: a fresh runtime with the same inputs decides exactly the same
    _, _, again, _ = run(tiny, family, name, cache, params)
    assert again.tokens == res.tokens
    for key in ("hit_rate", "loads", "cpu_experts", "substitutions", "skips", "prefetches"):
        assert again.metrics[key] == m[key], key


# ---- the registry ------------------------------------------------------------------------------------
def test_unknown_policy_lists_known_names():
    with pytest.raises(UnknownPolicy) as err:
        make_policy("nope")
    msg = str(err.value)
    assert "'nope'" in msg
    for name in POLICIES:
        assert name in msg


def test_unknown_parameter_names_accepted_ones():
    with pytest.raises(PolicyParamError) as err:
        make_policy("lru", bogus=1)
    assert "bogus" in str(err.value) and "accepted" in str(err.value)
    with pytest.raises(PolicyParamError) as err:
        make_policy("cpu-assist", bogus="1")
    assert "bogus" in str(err.value) and "calibration" in str(err.value)


def test_string_parameters_are_converted():
    assert make_policy("cpu-assist", calibration="none").calibration is None
    assert make_policy("cpu-assist", calibration="null").calibration is None
    assert make_policy("cpu-assist", calibration="t.pt").calibration == "t.pt"
    assert make_policy("cpu-assist").calibration is None


def test_typed_parameters_from_strings():
    pol = make_policy("smoe", alpha="0.3", window="none", balance="false", p="5")
    assert pol.alpha == 0.3 and pol.window is None and pol.balance is False and pol.p == 5
    with pytest.raises(PolicyParamError, match="alpha"):
        make_policy("smoe", alpha="lots")
    with pytest.raises(PolicyParamError, match="balance"):
        make_policy("smoe", balance="maybe")
