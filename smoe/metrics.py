"""Run metrics, owned and counted by the runtime (never by a policy).

Where it sits: the engine adds to the counters of the current phase at every MoE layer; the generation
loop records TTFT and the time of every decode step; `summary()` gives the flat dict that goes into a
run's JSON under the names the tables use.

Definitions:
  uses          (token, expert) computations of routed experts (substitutes included, skips not)
  hits          uses served on the device by an expert that was resident when the layer was planned
                (a queued prefetch counts as resident)
  hit_rate      decode hits / decode uses; the prefill is excluded, as the paper counts its cache ratio
  loads         expert copies host -> device (on-demand and prefetch); bytes_h2d their bytes
  cpu_experts   expert executions on the CPU (one per expert and layer, covering all its tokens)
  cpu_time_s    the CPU experts' compute, as the worker thread timed it
  cpu_host_s    the host's own work around them: the layer's input copied to the host and the jobs handed to the
                worker, then their gate-weighted sum (the worker's) copied to the device and added (not the wait
                for the worker)
  substitutions, skips   (token, expert) pairs a policy replaced or dropped
  prefetches / prefetch_used   experts loaded ahead of their layer / of those, later used before eviction
  prefetch_in_topk             prefetched experts that the router's top-k selected at their layer's next run
  policy_time_s the host time of the policy's decisions: plan (and the runtime's check of it), prefetch and
                observe, without the predictor pass a prefetch asks for
  check_time_s  of policy_time_s, the runtime's check of each plan (`plan.check_plan`): what every policy pays,
                however simple its plan
  prefetch_time_s of policy_time_s, the policy's prefetch decisions (without the predictor pass); the rest of
                policy_time_s is the plans (check_time_s included) and observe
  predict_time_s the host time of predictor passes (launching them and waiting for their scores)
  predictions   predictions a policy's prefetch read (each one wait for the device; several layers' scores read
                together count once)
  copy_s, copy_bytes   (GPU) the copies' measured time on the copy stream, each with its emulated hold, and bytes
  copy_wait_s   (GPU) the compute stream's time blocked on copies: device time of the phase that the link set
                (events around each layer's wait for its fresh copies: counts only where the compute had caught up)
  victim_wait_s (GPU) the copy stream's time blocked, before a copy, on the slot's previous expert's last reader

`span(name)` marks a stretch of the engine's work as a named range in a `torch.profiler` trace, only while
`SPANS` is set (`benchmarks/paper_shape.py --profile` sets it); timed runs pay nothing for it.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
from torch.profiler import record_function

SPANS = False  # name the engine's stretches in profiler traces
_NO_SPAN = nullcontext()  # stateless, so one serves every span of the decode loop


def span(name: str):
    """A named profiler range while `SPANS` is set, else a no-op context (no object made per call)."""
    return record_function(name) if SPANS else _NO_SPAN


@dataclass
class Counters:
    uses: int = 0
    hits: int = 0
    loads: int = 0
    bytes_h2d: int = 0
    cpu_experts: int = 0
    cpu_time_s: float = 0.0
    cpu_host_s: float = 0.0
    substitutions: int = 0
    skips: int = 0
    prefetches: int = 0
    prefetch_used: int = 0
    prefetch_in_topk: int = 0
    policy_time_s: float = 0.0
    check_time_s: float = 0.0
    prefetch_time_s: float = 0.0
    predict_time_s: float = 0.0
    predictions: int = 0
    copy_s: float = 0.0  # measured on the copy stream (GPU): copies read in this phase, each with its emulated hold
    copy_bytes: int = 0  # ... and their bytes
    copy_wait_s: float = 0.0  # GPU: the compute stream's time waiting for copies (the link's share of the step)
    victim_wait_s: float = 0.0  # GPU: the copy stream's time waiting for a slot's last reader before a copy


class Metrics:
    def __init__(self, preload_loads: int = 0):
        self.phases = {"prefill": Counters(), "decode": Counters()}
        self.preload_loads = preload_loads
        self.ttft_list: list[float] = []  # one per batch of prompts
        self.step_s: list[float] = []  # one per decode step
        self.queue_s: list[float] = []  # one per decode step: the host's part (`generate.Decoded.queue_s`)
        self.peak_device_bytes = 0

    def __getitem__(self, phase: str) -> Counters:
        return self.phases[phase]

    def summary(self) -> dict:
        p, d = self.phases["prefill"], self.phases["decode"]
        steps = np.asarray(self.step_s, dtype=float)
        total = {k: getattr(p, k) + getattr(d, k) for k in asdict(d)}
        return {
            "ttft_s": float(np.mean(self.ttft_list)) if self.ttft_list else None,
            "batches": len(self.ttft_list),
            "tpot_s": float(steps.mean()) if steps.size else None,
            "tpot_p50_s": float(np.percentile(steps, 50)) if steps.size else None,
            "tpot_p90_s": float(np.percentile(steps, 90)) if steps.size else None,
            "queue_s": float(np.mean(self.queue_s)) if self.queue_s else None,  # the host's part of the mean step
            "hit_rate": d.hits / d.uses if d.uses else None,
            "loads": total["loads"],
            "bytes_h2d": total["bytes_h2d"],
            "cpu_experts": total["cpu_experts"],
            "cpu_time_s": total["cpu_time_s"],
            "substitutions": total["substitutions"],
            "skips": total["skips"],
            "prefetches": total["prefetches"],
            "prefetch_used": total["prefetch_used"],
            "prefetch_in_topk": total["prefetch_in_topk"],
            "policy_time_s": total["policy_time_s"],
            "check_time_s": total["check_time_s"],
            "prefetch_time_s": total["prefetch_time_s"],
            "predict_time_s": total["predict_time_s"],
            "predictions": total["predictions"],
            "copy_wait_s": total["copy_wait_s"],
            "victim_wait_s": total["victim_wait_s"],
            # the host->device rate the copies got, as measured (an emulated link's included): None on a CPU
            "copy_gbps": total["copy_bytes"] / total["copy_s"] / 1e9 if total["copy_s"] else None,
            "peak_device_bytes": self.peak_device_bytes,
            "preload_loads": self.preload_loads,
            "decode_steps": int(steps.size),
            "decode_step_s": [round(x, 6) for x in self.step_s],
            "prefill": asdict(p),
            "decode": asdict(d),
        }
