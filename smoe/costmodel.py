"""A cost model: a recorded run's executed plans replayed under another machine's rates -> modelled TPOT.

Where it sits: after runs (their records keep `plans`: per decode forward of each MoE layer, the tokens, the
experts computed on the device, loaded, run on the CPU and prefetched; `trace_stats.plan_summary`). It answers
"what would this run cost on the paper's RTX 3080 Ti / 4060 Ti / A6000", which we cannot run, from the same
decisions. Values it produces are *modelled* and are labelled so wherever they appear.

Per decode step, layer by layer, it follows the overlaps the runtime has (`engine.py`) with three clocks: the
host, the device's compute stream and the copy engine (`step_times`):
- the host launches the layer's skeleton (attention, router, shared experts), which the device runs
  memory-bound (its bytes over the GPU's memory rate), and waits for the router scores; then it plans;
- the copies are issued one after another on the one copy engine (expert bytes over the PCIe rate), behind
  any prefetches of earlier layers; resident experts compute at once, each loaded one when its copy lands;
- a predicting policy launches its predictor passes and waits for them; CPU experts run from the planning on
  (expert bytes over the CPU's rate, or a measured time per expert) and the host waits for them;
- prefetches are queued on the copy engine after the layer's loads and delay later copies, not this layer.
The lm head closes each step. Decode at batch 1-3 is memory-bound, so compute rates do not enter. The host's
costs (`HostCosts`: per layer, per loaded expert, per predictor pass) are fitted on one machine's measured
runs (`fit_host_costs`, `model_measured_runs`) and carried to the profiles with that label; planning, CPU
experts and (where a record has it) the predictor passes are each run's own measurement instead.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path


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
                   "CPU rate assumed; replaced by the `machine_profile` rule's measurement where a config lists it "
                   "(`machine_profiles:`)", measured=False),
]}


def measured_profile(measurement: dict) -> MachineProfile:
    """A `MachineProfile` from `smoe.hardware.measure_machine`'s record (the DAG's `machine_profile` rule). On a
    CPU-only machine there is no link: a load is a host memory copy, at half the copy rate (read + write)."""
    pcie = measurement["pcie_gbps"] if measurement["pcie_gbps"] is not None else measurement["gpu_mem_gbps"] / 2
    return MachineProfile(measurement["name"], pcie, measurement["gpu_mem_gbps"], measurement["cpu_mem_gbps"],
                          f"measured on {measurement['device']} ({measurement['measured_at']}, "
                          f"{measurement['cpu_threads']} CPU-expert threads)", measured=True)


def profiles_with(measurements: list[dict]) -> dict[str, MachineProfile]:
    """The built-in profiles, each replaced by a measured one of the same name where there is one."""
    return {**PROFILES, **{m["name"]: measured_profile(m) for m in measurements}}


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


@dataclass(frozen=True)
class HostCosts:
    """Host seconds the runtime's Python spends beside the device work (kernel launches, waits, planning), as
    measured or fitted on one machine (`fit_host_costs`); zero everywhere is a host that costs nothing."""
    per_layer: float = 0.0  # a layer's skeleton launches (attention, router, combine): fitted on an all-GPU run
    per_load: float = 0.0  # each loaded expert: issuing its copy and its own kernels
    per_prediction: float = 0.0  # one predictor pass (the next layer's attention and router) and its wait
    policy_per_layer: float = 0.0  # the policy's planning: the run's own measurement
    cpu_per_expert: float | None = None  # one expert on this host's CPU (None: the profile's memory rate)
    cpu_host_per_expert: float = 0.0  # the host's own work around a CPU expert (its input out, its output back): the
    # run's own measurement (`cpu_host_s`; records before 2026-12-07 lack it, and are charged none)


def step_times(plans: list[list[int]], profile: MachineProfile, costs: ModelCosts,
               host: HostCosts = HostCosts(), predictions: float = 0, early: bool = False) -> list[float]:
    """Modelled seconds of each decode step. plans: [step, layer, tokens, device, loads, cpu, prefetches]
    rows in execution order (`trace_stats.plan_summary`); `predictions`: predictor passes the policy runs per
    layer (`ExpertPolicy.predictor_passes`; a mean where it predicts some layers only); `early`: they are queued
    behind the layer's skeleton and read with no wait of their own (`ExpertPolicy.early_prediction`).

    Three clocks: the host (launches, planning, waits), the device's compute stream and the copy engine. The
    host launches a layer's skeleton, then waits for its router scores (the device must have run it), plans,
    issues the copies, launches the experts; the device runs resident experts at once and each loaded one when
    its copy has landed. Experts prefetched by the layer before (as many as it prefetched, at most the layer's
    resident ones; a prefetch is taken to serve the next layer) are resident but may still be copying: the engine
    runs them in its second group, once their copies have landed (`Engine._run_layer`'s late group). A predicting
    policy then launches the predictor and waits for its scores (each pass charged a skeleton's bytes on the
    device); CPU experts run from the planning on, and the host waits for them and brings their outputs back before
    the next layer. The step ends when the host has read the next token (after the
    lm head)."""
    gb = 1e9
    t_skel = costs.layer_skeleton_bytes / (profile.gpu_mem_gbps * gb)
    t_gpu = costs.expert_bytes / (profile.gpu_mem_gbps * gb)  # one expert on the device
    t_copy = costs.expert_bytes / (profile.pcie_gbps * gb)  # one expert over PCIe
    t_cpu = host.cpu_per_expert if host.cpu_per_expert is not None else \
        costs.expert_bytes / (profile.cpu_mem_gbps * gb)  # one expert on the CPU
    t_head = costs.head_bytes / (profile.gpu_mem_gbps * gb)
    steps: dict[int, float] = {}
    h = g = c = start = 0.0  # host, compute stream, copy engine
    current = None
    prefetched, prefetch_landed = 0, 0.0  # the previous layer's prefetches and when the last of them lands

    def end_step() -> float:
        nonlocal h, g
        g = max(g, h) + t_head
        h = max(h, g)  # the next token is read
        return h

    for step, _layer, _tokens, device, loads, cpu, prefetches in plans:
        if step != current:
            if current is not None:
                steps[current] = end_step() - start
            current, start = step, h
        h += host.per_layer
        g = max(g, h) + t_skel
        h = max(h, g)  # router scores read
        if predictions and early:  # queued behind the router: the device runs them while the host plans
            g += predictions * t_skel
        h += host.policy_per_layer  # the plan
        cpu_done = h + cpu * t_cpu
        landed = []
        for _ in range(loads):
            c = max(c, h) + t_copy
            landed.append(c)
        h += loads * host.per_load
        late = min(prefetched, device - loads)  # resident, prefetched by the layer before: maybe still copying
        g = max(g, h) + (device - loads - late) * t_gpu  # long-resident experts while the copies run
        if predictions:
            h += predictions * host.per_prediction
            if not early:
                g = max(g, h) + predictions * t_skel  # the predictor's attention and router
                h = max(h, g)  # its scores read
        if late:
            g = max(g, prefetch_landed) + late * t_gpu
        c = max(c, h) + prefetches * t_copy  # later layers' experts, behind this layer's loads
        prefetched, prefetch_landed = prefetches, c
        for landed_at in landed:
            g = max(g, landed_at) + t_gpu
        h = max(h, cpu_done) + cpu * host.cpu_host_per_expert
    if current is not None:
        steps[current] = end_step() - start
    return [steps[s] for s in sorted(steps)]


def calibrate(all_gpu_plans: list[list[int]], measured_tpot_s: float, profile: MachineProfile,
              costs: ModelCosts, host: HostCosts = HostCosts()) -> float:
    """The host seconds per layer (`HostCosts.per_layer`) that make the model's all-GPU TPOT equal the
    measured one (>= 0); `host`'s other fields are kept."""
    def tpot(per_layer: float) -> float:
        steps = step_times(all_gpu_plans, profile, costs, replace(host, per_layer=per_layer))
        return sum(steps) / max(len(steps), 1)

    lo, hi = 0.0, max(measured_tpot_s, 1e-9)
    if tpot(lo) >= measured_tpot_s:
        return 0.0
    for _ in range(60):  # TPOT grows monotonically with the host cost: bisect
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tpot(mid) < measured_tpot_s else (lo, mid)
    return (lo + hi) / 2


SKELETON_MODES = ("layer", "attention", "eager")  # what a run's decode layers replayed as CUDA graphs


def skeleton_mode(env: dict) -> str:
    """What a run's decode layers replayed as CUDA graphs, from its record's `env` (`Runtime.environment()`):
    `layer` (the attention and the rest of the layer but the routed experts), `attention` (the attention alone:
    every run before the block pieces, ea08add) or `eager` (none)."""
    if env.get("block_graphs", 0) > 0:
        return "layer"
    return "attention" if env.get("skeleton_graphs", 0) > 0 else "eager"


@dataclass
class MeasuredRun:
    """What the fit needs of one measured run (a `run_replayed` record)."""
    group: tuple  # (batch, workload, skeleton graphs mode, grouped mode, router first): runs of one group share the
    # all-GPU floor
    policy: str
    floor: bool  # the all-GPU run of its group
    plans: list[list[int]]
    costs: ModelCosts
    tpot_s: float
    link_gbps: float  # the host->device rate it ran at (measured or emulated)
    host: HostCosts  # its own measured planning time per layer, CPU expert time and host work per CPU expert
    predictions: float  # predictor passes per layer (a mean over the run's decode layers where recorded)
    own_prediction: float | None = None  # its measured host seconds per predictor pass (None: not recorded)
    early: bool = False  # its predictions are queued behind the router and read with no wait (`step_times`)

    @classmethod
    def from_record(cls, rec: dict, native_gbps: float, defaults: dict | None = None) -> "MeasuredRun":
        """`defaults`: {policy: {param: value}}, the defaults of the code that made a record which does not
        list its resolved parameters (records made before they did), where they differ from today's."""
        from .policy import current_params, make_policy

        p, m = rec["params"], rec["metrics"]
        dec = m["decode"]
        layers = max(len(rec["plans"]), 1)
        cpu = dec["cpu_time_s"] / dec["cpu_experts"] if dec["cpu_experts"] else None
        cpu_host = dec.get("cpu_host_s", 0.0) / dec["cpu_experts"] if dec["cpu_experts"] else 0.0
        params = p.get("policy_resolved")
        if params is None:
            params = {**(defaults or {}).get(p["policy"], {}), **p.get("policy_params", {})}
        policy = make_policy(p["policy"], **current_params(p["policy"], params))
        label = rec.get("row", {}).get("policy", p["policy"])  # a benchmark's spec, e.g. smoe:prefetch_mode=none
        passes = policy.predictor_passes
        if passes and "predictions" in dec and not policy.early_prediction:
            # records since the prefetch gate count the predictions read, each covering `predictor_passes` layers'
            # passes; an early prediction is queued by the engine in every layer, read or not
            passes = passes * dec["predictions"] / layers
        # records since the second GPU campaign time the predictor apart from planning (`predict_time_s`)
        own = dec["predict_time_s"] / (layers * passes) if passes and "predict_time_s" in dec else None
        graphs = skeleton_mode(rec.get("env", {}))
        grouped = rec.get("env", {}).get("grouped_experts", "gather")  # records before the slot kernel gathered
        first = rec.get("env", {}).get("router_first", 0) > 0  # records before 2026-12-01 ran HF's block order
        kv = rec.get("env", {}).get("kv_cache", "dynamic")  # records before the static cache grew theirs
        return cls(group=(p["batch"], Path(p["replay"]).parent.name, graphs, grouped, first, kv), policy=label,
                   floor=p["policy"] == "all-gpu", plans=rec["plans"],
                   costs=ModelCosts(**rec["costs"]), tpot_s=m["tpot_s"],
                   link_gbps=p.get("link_gbps") or native_gbps,
                   host=HostCosts(policy_per_layer=dec["policy_time_s"] / layers, cpu_per_expert=cpu,
                                  cpu_host_per_expert=cpu_host),
                   predictions=passes, own_prediction=own, early=policy.early_prediction)

    def prediction_cost(self, host: HostCosts) -> float:
        """Host seconds per predictor pass: this run's own measurement where recorded, else `host`'s."""
        return host.per_prediction if self.own_prediction is None else self.own_prediction

    def modelled(self, profile: MachineProfile, host: HostCosts, own_cpu: bool = True) -> float:
        """Mean modelled step under `profile` with `host`'s costs plus this run's own planning time, its own
        predictor time where recorded, its host work around each CPU expert, and (if `own_cpu`: on the machine it
        ran on) its measured CPU expert time; else the profile's CPU rate."""
        h = replace(host, policy_per_layer=self.host.policy_per_layer,
                    cpu_per_expert=self.host.cpu_per_expert if own_cpu else None,
                    cpu_host_per_expert=self.host.cpu_host_per_expert)
        h = replace(h, per_prediction=self.prediction_cost(host))
        steps = step_times(self.plans, profile, self.costs, h, self.predictions, self.early)
        return sum(steps) / max(len(steps), 1)


def fit_host_costs(runs: list[MeasuredRun], profile: MachineProfile) -> tuple[dict, HostCosts]:
    """Host costs of the machine `runs` were measured on: per group the per-layer cost from its all-GPU run
    (`calibrate`), then one per-load and one per-prediction cost for all runs, by grid search minimising the
    squared log error of the offloading runs given (fit on some runs, check on others); the per-prediction
    cost matters only for runs that did not record their own. Returns ({group: per_layer}, HostCosts with
    per_load and per_prediction)."""
    import math

    per_layer = {r.group: calibrate(r.plans, r.tpot_s, profile, r.costs, r.host) for r in runs if r.floor}
    offload = [r for r in runs if not r.floor and r.group in per_layer]

    def loss(per_load: float, per_prediction: float) -> float:
        err = 0.0
        for r in offload:
            prof = replace(profile, pcie_gbps=r.link_gbps)
            host = HostCosts(per_layer=per_layer[r.group], per_load=per_load, per_prediction=per_prediction)
            err += math.log(r.modelled(prof, host) / r.tpot_s) ** 2
        return err / max(len(offload), 1)

    # a coarse grid (0-2 ms per load, 0-4 ms per pass), then a finer one around its best point
    step_load, step_pred = 0.2e-3, 0.4e-3
    best = min(((loss(a * step_load, b * step_pred), a * step_load, b * step_pred)
                for a in range(11) for b in range(11)), key=lambda t: t[0])
    _, a0, b0 = best
    fine = [(loss(a, b), a, b) for a in (max(0.0, a0 + i * step_load / 5) for i in range(-5, 6))
            for b in (max(0.0, b0 + j * step_pred / 5) for j in range(-5, 6))]
    _, a, b = min([best, *fine], key=lambda t: t[0])
    return per_layer, HostCosts(per_load=a, per_prediction=b)


def model_measured_runs(records: list[dict], native_gbps: float, measured_on: str,
                        profiles: dict[str, MachineProfile] = PROFILES,
                        policy_defaults: dict | None = None) -> tuple[list[dict], list[dict]]:
    """The cost model against one benchmark's measured runs (`run_replayed` records, one process, one machine).

    Host costs are fitted on the runs at the machine's own link (`native_gbps`, GB/s) and the all-GPU floors;
    every offloading run is then modelled at its own link rate, so the runs with an emulated link are held out
    of the fit. Returns (validation rows: modelled vs measured per run, with `held_out` and `fit_runs`; modelled
    rows: every run under each profile in `profiles`, with the fitted host costs of `measured_on`,
    measured=False); none for a benchmark without floors. `policy_defaults`: see `MeasuredRun.from_record`."""
    runs = [MeasuredRun.from_record(r, native_gbps, policy_defaults) for r in records]
    if not any(r.floor for r in runs):  # no floor calibrates the host's per-layer cost (`paper_shape.py --no-floor`)
        return [], []
    here = replace(profiles[measured_on], pcie_gbps=native_gbps)
    native = [r for r in runs if r.link_gbps == native_gbps]
    per_layer, fitted = fit_host_costs(native, here)
    # offloading runs the per-load and per-prediction costs are fitted on; with none (a benchmark run at emulated
    # links only) they stay 0 and only the floors' per-layer costs are calibrated
    fit_runs = sum(1 for r in native if not r.floor)
    validation, modelled = [], []
    for rec, run in zip(records, runs):
        if run.floor or run.group not in per_layer:
            continue
        host = replace(fitted, per_layer=per_layer[run.group])
        key = {k: rec["row"][k] for k in ("model", "budget_gb", "policy", "batch", "workload", "link_gbps")}
        tpot = run.modelled(replace(here, pcie_gbps=run.link_gbps), host)
        validation.append({**key, "profile": measured_on, "held_out": run.link_gbps != native_gbps,
                           "measured_tpot_s": run.tpot_s, "modelled_tpot_s": tpot, "error": tpot / run.tpot_s - 1,
                           "host_per_layer_s": host.per_layer, "host_per_load_s": host.per_load,
                           "host_per_prediction_s": run.prediction_cost(host),
                           "own_prediction": run.own_prediction is not None,
                           "fit_runs": fit_runs})
        if run.link_gbps != native_gbps:
            continue  # the paper's GPUs are modelled from the native runs' decisions
        for profile in profiles.values():
            modelled.append({**key, "link_gbps": profile.pcie_gbps, "gpu": profile.name, "measured": False,
                             "tpot_s": run.modelled(profile, host, own_cpu=False), "host_costs_of": measured_on})
    return validation, modelled
