"""The cost model on hand-made plans (the overlaps it models) and on a real run's plans."""
import pytest

from smoe.costmodel import PROFILES, MachineProfile, ModelCosts, calibrate, model_costs, step_times
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


def test_steps_are_split_and_the_head_and_host_cost_count():
    costs = ModelCosts(expert_bytes=10**9, layer_skeleton_bytes=10**9, head_bytes=10**9)
    plans = [[1, 0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0], [2, 0, 1, 1, 0, 0, 0], [2, 1, 1, 1, 0, 0, 0]]
    assert step_times(plans, UNIT, costs) == [5.0, 5.0]  # 2 x (skeleton 1 + expert 1) + head 1
    assert step_times(plans, UNIT, costs, host_s_per_layer=0.5) == [6.0, 6.0]
    host = calibrate(plans, measured_tpot_s=7.0, profile=UNIT, costs=costs)
    assert host == pytest.approx(1.0) and calibrate(plans, 1.0, UNIT, costs) == 0.0


def test_a_real_runs_plans_model_slower_on_slower_links(tmp_path):
    rt = Runtime(make_tiny("qwen2_moe", tmp_path / "q"), "lru", cache_experts=6, trace=True)
    rt.generate([[1, 2, 3, 4]], max_new_tokens=5)
    costs, plans = model_costs(rt), plan_summary(rt.engine.trace)
    rt.close()
    assert costs.expert_bytes > 0 and costs.layer_skeleton_bytes > 0 and costs.head_bytes > 0
    assert len(plans) == 4 * 3  # 4 decode steps x 3 MoE layers
    slow, fast = (step_times(plans, PROFILES[name], costs) for name in ("rtx4060ti-16g", "h200"))
    assert len(slow) == 4 and all(s > f > 0 for s, f in zip(slow, fast))
