"""The cost model on hand-made plans (the overlaps it models) and on a real run's plans."""
import pytest

from dataclasses import replace

from smoe.costmodel import (PROFILES, HostCosts, MachineProfile, MeasuredRun, ModelCosts, calibrate, fit_host_costs,
                            model_costs, step_times)
from smoe.runtime import Runtime
from smoe.tiny import make_tiny
from smoe.trace_stats import plan_summary

# 1 GB/s everywhere and 1 GB experts: one expert costs 1 s to copy, compute or run on the CPU
UNIT = MachineProfile("unit", pcie_gbps=1.0, gpu_mem_gbps=1.0, cpu_mem_gbps=1.0, source="test")
COSTS = ModelCosts(expert_bytes=10**9, layer_skeleton_bytes=0, head_bytes=0)


def test_resident_experts_hide_the_copies_and_loaded_ones_wait_for_them():
    # 3 resident experts compute (3 s) while 2 copies land at 1 s and 2 s: the loaded two follow at 4 and 5 s
    assert step_times([[1, 0, 1, 5, 2, 0, 0]], UNIT, COSTS) == [5.0]
    # no resident expert: each loaded expert waits for its copy: copy 1, compute 2; copy 2 lands at 2, compute 3
    assert step_times([[1, 0, 1, 2, 2, 0, 0]], UNIT, COSTS) == [3.0]


def test_cpu_experts_run_beside_the_gpu_and_prefetches_delay_later_copies():
    assert step_times([[1, 0, 1, 2, 0, 3, 0]], UNIT, COSTS) == [3.0]  # CPU 3 s beside GPU 2 s
    # layer 0 (1 s) prefetches 2 experts, copying 0-2 s; layer 1's load waits for them: copy 2-3 s, compute 3-4 s
    plans = [[1, 0, 1, 1, 0, 0, 2], [1, 1, 1, 1, 1, 0, 0]]
    assert step_times(plans, UNIT, COSTS) == [4.0]
    # without the prefetch layer 1's copy runs 1-2 s, its compute 2-3 s
    assert step_times([[1, 0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0]], UNIT, COSTS) == [3.0]


def test_experts_prefetched_by_the_layer_before_wait_for_their_copies():
    # layer 0 (1 s) prefetches 2 experts, copying 0-2 s; layer 1 finds them resident but runs them once they land
    plans = [[1, 0, 1, 1, 0, 0, 2], [1, 1, 1, 2, 0, 0, 0]]
    assert step_times(plans, UNIT, COSTS) == [4.0]
    # long resident, the same two run at once after layer 0: 1 + 2 s
    assert step_times([[1, 0, 1, 1, 0, 0, 0], [1, 1, 1, 2, 0, 0, 0]], UNIT, COSTS) == [3.0]
    # layer 1 also has a long-resident third expert: it runs while the prefetches land (1-2 s), then theirs 2-4 s
    assert step_times([[1, 0, 1, 1, 0, 0, 2], [1, 1, 1, 3, 0, 0, 0]], UNIT, COSTS) == [4.0]


def test_steps_are_split_and_the_head_and_host_cost_count():
    costs = ModelCosts(expert_bytes=10**9, layer_skeleton_bytes=10**9, head_bytes=10**9)
    plans = [[1, 0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0], [2, 0, 1, 1, 0, 0, 0], [2, 1, 1, 1, 0, 0, 0]]
    assert step_times(plans, UNIT, costs) == [5.0, 5.0]  # 2 x (skeleton 1 + expert 1) + head 1
    # 0.5 s of launches per layer: layer 1's overlap layer 0's expert on the device, layer 0's do not
    assert step_times(plans, UNIT, costs, HostCosts(per_layer=0.5)) == [5.5, 5.5]
    # from 1 s per layer on the host is the bottleneck: step = 2 x (launches + skeleton) + expert + head
    host = calibrate(plans, measured_tpot_s=7.0, profile=UNIT, costs=costs)
    assert host == pytest.approx(1.5) and calibrate(plans, 1.0, UNIT, costs) == 0.0


def test_host_costs_planning_predictions_and_cpu_experts_add_where_the_host_waits():
    plan = [[1, 0, 1, 2, 0, 0, 0]]  # two resident experts: 2 s on the device
    assert step_times(plan, UNIT, COSTS, HostCosts(policy_per_layer=0.5)) == [2.5]  # planning before launching
    # two predictor passes of 1.5 s each on the host: they overlap the experts (2 s) and outlast them
    assert step_times(plan, UNIT, COSTS, HostCosts(per_prediction=1.5), predictions=2) == [3.0]
    assert step_times(plan, UNIT, COSTS, HostCosts(per_prediction=1.5), predictions=2, early=True) == [3.0]
    # a pass that costs the device 1 s (a skeleton's bytes), with 1 s of planning: the waiting predictor's pass
    # runs after the experts and the host waits for it (skeleton 1, plan 1, experts 2, pass 1); the early one is
    # queued behind the router, so the device runs it while the host plans (skeleton 1, pass 1, experts 2)
    costs = ModelCosts(expert_bytes=10**9, layer_skeleton_bytes=10**9, head_bytes=0)
    assert step_times(plan, UNIT, costs, HostCosts(policy_per_layer=1.0), predictions=1) == [5.0]
    assert step_times(plan, UNIT, costs, HostCosts(policy_per_layer=1.0), predictions=1, early=True) == [4.0]
    # a CPU expert at the host's measured 4 s instead of the profile's 1 s; the host's own work around each of two,
    # 0.5 s, after it has waited for them
    assert step_times([[1, 0, 1, 0, 0, 1, 0]], UNIT, COSTS, HostCosts(cpu_per_expert=4.0)) == [4.0]
    host = HostCosts(cpu_per_expert=4.0, cpu_host_per_expert=0.5)
    assert step_times([[1, 0, 1, 0, 0, 2, 0]], UNIT, COSTS, host) == [9.0]
    # a copy is hidden behind host work that follows it: 3 s of launches after issuing it, 1 s copy
    assert step_times([[1, 0, 1, 1, 1, 0, 0]], UNIT, COSTS, HostCosts(per_load=3.0)) == [4.0]


def test_the_fit_recovers_host_costs_and_checks_runs_it_did_not_see():
    """Runs made by the model itself with known host costs: the fit on the native-link ones finds those costs
    again, and the emulated-link (held-out) ones are then predicted exactly."""
    costs = ModelCosts(expert_bytes=10**7, layer_skeleton_bytes=10**8, head_bytes=10**8)
    h200 = PROFILES["h200"]
    truth = HostCosts(per_layer=2e-3, per_load=0.4e-3, per_prediction=1.2e-3)
    plans = {"all-gpu": [[s, l, 1, 6, 0, 0, 0] for s in range(4) for l in range(8)],
             "lru": [[s, l, 1, 6, 3, 0, 0] for s in range(4) for l in range(8)],
             "smoe": [[s, l, 1, 6, 1, 1, 2] for s in range(4) for l in range(8)]}

    def run(policy: str, link: float) -> MeasuredRun:
        predictions = 1 if policy == "smoe" else 0
        host = HostCosts(policy_per_layer=1e-4, cpu_per_expert=5e-4)
        sim = replace(truth, policy_per_layer=host.policy_per_layer, cpu_per_expert=host.cpu_per_expert)
        steps = step_times(plans[policy], replace(h200, pcie_gbps=link), costs, sim, predictions)
        return MeasuredRun((1, "exam"), policy, policy == "all-gpu", plans[policy], costs, sum(steps) / len(steps), link, host,
                           predictions)

    native = [run(p, 55.0) for p in plans]
    per_layer, fitted = fit_host_costs(native, replace(h200, pcie_gbps=55.0))
    assert per_layer[(1, "exam")] == pytest.approx(truth.per_layer, rel=1e-6)
    assert fitted.per_load == pytest.approx(truth.per_load, abs=1e-5)
    assert fitted.per_prediction == pytest.approx(truth.per_prediction, abs=1e-5)
    for held_out in (run("lru", 12.0), run("smoe", 12.0)):
        host = replace(fitted, per_layer=per_layer[(1, "exam")])
        assert held_out.modelled(replace(h200, pcie_gbps=12.0), host) == pytest.approx(held_out.tpot_s, rel=1e-3)


def test_a_real_runs_plans_model_slower_on_slower_links(tmp_path):
    rt = Runtime(make_tiny("qwen2_moe", tmp_path / "q"), "lru", cache_experts=6, trace=True)
    rt.generate([[1, 2, 3, 4]], max_new_tokens=5)
    costs, plans = model_costs(rt), plan_summary(rt.engine.trace)
    rt.close()
    assert costs.expert_bytes > 0 and costs.layer_skeleton_bytes > 0 and costs.head_bytes > 0
    assert len(plans) == 4 * 3  # 4 decode steps x 3 MoE layers
    slow, fast = (step_times(plans, PROFILES[name], costs) for name in ("rtx4060ti-16g", "h200"))
    assert len(slow) == 4 and all(s > f > 0 for s, f in zip(slow, fast))


def test_a_run_that_timed_its_predictor_is_modelled_with_its_own_time():
    """Predictor passes are charged at the run's measured time per pass where its record has one (as planning
    is), so a run at an emulated link, which no fit can learn the pass cost from, still pays for them."""
    plan = [[s, l, 1, 2, 0, 0, 0] for s in range(2) for l in range(3)]  # two resident experts per layer: 2 s
    run = MeasuredRun((1, "exam"), "smoe", False, plan, COSTS, 0.0, 1.0, HostCosts(), predictions=1, own_prediction=4.0)
    fitted = HostCosts(per_prediction=0.5)
    # each layer: experts 2 s on the device while the host spends 4 s on the pass, then waits: 3 layers x 4 s
    assert run.modelled(UNIT, fitted) == pytest.approx(12.0)
    unmeasured = replace(run, own_prediction=None)  # an older record: the fitted 0.5 s, hidden by the experts
    assert unmeasured.modelled(UNIT, fitted) == pytest.approx(6.0)


def test_records_give_the_predictor_time_per_pass_when_they_have_it():
    record = {"params": {"policy": "smoe", "batch": 1, "replay": "traces/exam/b1.pt", "policy_params": {}},
              "metrics": {"tpot_s": 0.1, "decode": {"policy_time_s": 0.6, "cpu_time_s": 0.0, "cpu_experts": 0,
                                                    "predict_time_s": 1.2}},
              "plans": [[s, l, 1, 2, 0, 0, 0] for s in range(3) for l in range(4)],
              "costs": {"expert_bytes": 1, "layer_skeleton_bytes": 1, "head_bytes": 1}}
    run = MeasuredRun.from_record(record, 55.0)
    assert run.predictions == 1 and run.own_prediction == pytest.approx(1.2 / 12)
    assert run.host.policy_per_layer == pytest.approx(0.6 / 12)
    assert run.host.cpu_host_per_expert == 0.0  # no CPU experts
    cpu = {**record, "metrics": {"tpot_s": 0.1, "decode": {**record["metrics"]["decode"], "cpu_time_s": 0.8,
                                                           "cpu_experts": 4, "cpu_host_s": 0.2}}}
    host = MeasuredRun.from_record(cpu, 55.0).host
    assert (host.cpu_per_expert, host.cpu_host_per_expert) == (pytest.approx(0.2), pytest.approx(0.05))
    del cpu["metrics"]["decode"]["cpu_host_s"]  # a record from before 2026-12-07: charged none
    assert MeasuredRun.from_record(cpu, 55.0).host.cpu_host_per_expert == 0.0
    del record["metrics"]["decode"]["predict_time_s"]  # a first-campaign record
    assert MeasuredRun.from_record(record, 55.0).own_prediction is None
    assert not run.early and MeasuredRun.from_record({**record, "params": {**record["params"], "policy": "smoe-early"}},
                                                     55.0).early
    record["metrics"]["decode"].update(predict_time_s=1.2, predictions=3)  # a gated run predicted 3 of 12 layers
    gated = MeasuredRun.from_record(record, 55.0)
    assert gated.predictions == pytest.approx(0.25) and gated.own_prediction == pytest.approx(1.2 / 3)
    early = {**record, "params": {**record["params"], "policy": "smoe-early"}}  # queued in every layer, read or not
    assert MeasuredRun.from_record(early, 55.0).predictions == 1
    record["params"]["policy"] = "lru"  # no predictor: nothing to charge
    record["metrics"]["decode"].update(predict_time_s=0.0, predictions=0)
    assert MeasuredRun.from_record(record, 55.0).own_prediction is None


def test_the_machine_profile_rule_measures_this_machine_and_replaces_a_built_in_profile():
    """`measure_machine` on the CPU (what the DAG's `machine_profile` rule runs): positive rates, no link; as a
    profile a load is a host copy at half the copy rate (read + write counted); a measured profile of a built-in
    name replaces that profile for the cost model and keeps the others."""
    from smoe.costmodel import measured_profile, profiles_with
    from smoe.hardware import measure_machine

    rec = measure_machine("cpu", "cpu", hidden=256, intermediate=128, threads=1)
    assert rec["pcie_gbps"] is None and rec["gpu_mem_gbps"] > 0 and rec["cpu_mem_gbps"] > 0
    assert rec["expert"]["bytes"] == 3 * 256 * 128 * 2 and rec["cpu_threads"] == 1
    cpu = measured_profile(rec)
    assert cpu.measured and cpu.pcie_gbps == rec["gpu_mem_gbps"] / 2 and cpu.cpu_mem_gbps == rec["cpu_mem_gbps"]
    h200 = measured_profile({**rec, "name": "h200", "pcie_gbps": 53.0})
    profiles = profiles_with([{**rec, "name": "h200", "pcie_gbps": 53.0}])
    assert profiles["h200"] == h200 and profiles["h200"].pcie_gbps == 53.0 and profiles["h200"].measured
    assert {n: p for n, p in profiles.items() if n != "h200"} == {n: p for n, p in PROFILES.items() if n != "h200"}
    with pytest.raises(ValueError, match="device 'tpu'; accepted: cpu, cuda"):
        measure_machine("tpu", "x")
