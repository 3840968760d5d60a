"""A cost model: a recorded run's executed plans replayed under another machine's rates -> modelled TPOT.

Where it sits: after runs (their records keep `plans`: per decode forward of each MoE layer, the tokens, the
experts computed on the device, loaded, run on the CPU and prefetched; `trace_stats.plan_summary`). It answers
"what would this run cost on the paper's RTX 3080 Ti / 4060 Ti / A6000", which we cannot run, from the same
decisions. Values it produces are *modelled* and are labelled so wherever they appear.

Per decode step, layer by layer, it follows the overlaps the runtime has (`engine.py`):
- the layer's skeleton (attention, router, shared experts) runs on the GPU, memory-bound: its bytes over the
  GPU's memory rate, plus a fixed host cost per layer (kernel launches, the wait for router scores,
  planning), which `calibrate` fits on a measured all-GPU run of the same software;
- then the copies are issued: each load takes expert bytes over the PCIe rate, one after another on one copy
  engine that prefetches of earlier layers may still occupy;
- resident experts compute first (expert bytes over the memory rate each), then each loaded expert when its
  copy has landed;
- CPU experts run meanwhile on the CPU (expert bytes over the CPU's memory rate each, weights streamed once),
  and their outputs come back before the layer ends;
- prefetches are queued on the copy engine after the layer's loads and delay later copies, not this layer.
The lm head closes each step. Decode at batch 1-3 is memory-bound, so compute rates do not enter.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MachineProfile:
    name: str
    pcie_gbps: float  # host -> device copy rate of one expert, GB/s (pinned)
    gpu_mem_gbps: float  # device memory rate, GB/s
    cpu_mem_gbps: float  # what the CPU streams through an expert's weights, GB/s
    source: str  # where the numbers come from
    measured: bool = False  # true only for rates measured on that machine


# Effective rates: a PCIe 3.0 x16 link moves about 12 GB/s of pinned copies, 4.0 x16 about 24 GB/s (half a
# link's lanes, half that); memory rates are the vendors'; CPU rates are what an 8-core share of the host's
# memory channels streams (the paper's CPU comparison uses 8 cores).
PROFILES: dict[str, MachineProfile] = {p.name: p for p in [
    MachineProfile("rtx3080ti-12g", 12.0, 912.0, 40.0,
                   "RTX 3080 Ti (912 GB/s) on PCIe 3.0 x16, Xeon E5-2683 v3 (DDR4-2133, 4 channels): paper v3 appendix + vendor data"),
    MachineProfile("rtx4060ti-16g", 6.0, 288.0, 40.0,
                   "RTX 4060 Ti 16 GB (288 GB/s, a PCIe 4.0 x8 card) in a PCIe 3.0 host (x8 at 3.0 rates), Xeon E5-2683 v3: paper v3 appendix + vendor data"),
    MachineProfile("a6000-48g", 24.0, 768.0, 120.0,
                   "RTX A6000 (768 GB/s) on PCIe 4.0 x16, Xeon Gold 6444Y (DDR5-4800, 8 channels): paper v3 appendix + vendor data"),
    MachineProfile("h200", 55.0, 4800.0, 60.0,
                   "H200: pinned copy rate measured here (results/gpu/core_h200/summary.json), memory rate vendor data, "
                   "CPU rate assumed until measured", measured=False),
]}


@dataclass(frozen=True)
class ModelCosts:
    """What one decode forward moves, in bytes (from the model's shape)."""
    expert_bytes: int
    layer_skeleton_bytes: int  # attention + router + shared experts of one MoE layer
    head_bytes: int  # final norm + lm head


def model_costs(runtime) -> ModelCosts:
    """Byte counts of a loaded `Runtime`'s model: the mean MoE decoder layer's device-resident parameters
    (its routed experts live in the pool, not in the layer) and the lm head."""
    def nbytes(module) -> int:
        return sum(p.numel() * p.element_size() for p in module.parameters())

    layers = runtime.model.model.layers
    moe = runtime.info.moe_layers
    return ModelCosts(expert_bytes=runtime.info.expert_bytes,
                      layer_skeleton_bytes=sum(nbytes(layers[i]) for i in moe) // len(moe),
                      head_bytes=nbytes(runtime.model.lm_head) + nbytes(runtime.model.model.norm))


def step_times(plans: list[list[int]], profile: MachineProfile, costs: ModelCosts,
               host_s_per_layer: float = 0.0) -> list[float]:
    """Modelled seconds of each decode step. plans: [step, layer, tokens, device, loads, cpu, prefetches]
    rows in execution order (`trace_stats.plan_summary`)."""
    gb = 1e9
    t_skel = costs.layer_skeleton_bytes / (profile.gpu_mem_gbps * gb) + host_s_per_layer
    t_gpu = costs.expert_bytes / (profile.gpu_mem_gbps * gb)  # one expert on the device
    t_copy = costs.expert_bytes / (profile.pcie_gbps * gb)  # one expert over PCIe
    t_cpu = costs.expert_bytes / (profile.cpu_mem_gbps * gb)  # one expert on the CPU
    t_head = costs.head_bytes / (profile.gpu_mem_gbps * gb)
    steps: dict[int, float] = {}
    now = copy_free = start = 0.0
    current = None
    for step, _layer, _tokens, device, loads, cpu, prefetches in plans:
        if step != current:
            if current is not None:
                now += t_head
                steps[current] = now - start
            current, start = step, now
        routed = now + t_skel  # scores known: copies can start
        copy_free = max(copy_free, routed)
        gpu = routed + (device - loads) * t_gpu  # resident experts while the copies run
        for _ in range(loads):
            copy_free += t_copy
            gpu = max(gpu, copy_free) + t_gpu
        copy_free += prefetches * t_copy  # later layers' experts, behind this layer's loads
        cpu_done = routed + cpu * t_cpu
        now = max(gpu, cpu_done)
    if current is not None:
        now += t_head
        steps[current] = now - start
    return [steps[s] for s in sorted(steps)]


def calibrate(all_gpu_plans: list[list[int]], measured_tpot_s: float, profile: MachineProfile,
              costs: ModelCosts) -> float:
    """The host seconds per layer that make the model's all-GPU TPOT equal the measured one (>= 0)."""
    modelled = step_times(all_gpu_plans, profile, costs)
    per_step_layers = len(all_gpu_plans) / max(len(modelled), 1)
    gap = measured_tpot_s - sum(modelled) / max(len(modelled), 1)
    return max(gap / per_step_layers, 0.0)
