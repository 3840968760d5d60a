"""cpu-assist: a static set of experts on the device, every other expert computed on the CPU (Fiddler,
Kamahori et al. 2024, arXiv 2402.07033; llama.cpp's CPU-expert offload). Rule: the experts most used in a
calibration trace (or, without one, the first ones requested until the slots are full) stay resident for
the whole run; a routed expert that is not resident runs on the CPU and is never loaded."""
from __future__ import annotations

from collections import Counter

import torch

from smoe.errors import PolicyParamError
from smoe.plan import Action, ExpertKey, LayerView, ModelInfo, Plan
from smoe.policy import ExpertPolicy, register_policy


def expert_use_counts(trace_path: str) -> Counter:
    """(layer, expert) -> routed uses in a trace written by `smoe run --trace`."""
    try:
        records = torch.load(trace_path, weights_only=False)["records"]
    except FileNotFoundError:
        raise PolicyParamError(f"calibration trace {trace_path!r} does not exist") from None
    counts: Counter = Counter()
    for r in records:
        for e in r["topk"].flatten().tolist():
            counts[(r["layer"], e)] += 1
    return counts


@register_policy("cpu-assist")
class CPUAssist(ExpertPolicy):
    calibration: str | None = None  # a trace file (`smoe run --trace`) to choose the resident experts from

    def setup(self, model: ModelInfo, capacity: int) -> list[ExpertKey]:
        if self.calibration is None:
            return []
        counts = expert_use_counts(self.calibration)
        ranked = sorted(counts, key=lambda k: (-counts[k], k))
        return ranked[:capacity]

    def plan(self, view: LayerView) -> Plan:
        resident = view.cache.resident(view.layer)
        free = view.cache.free_slots if self.calibration is None else 0
        placement: dict[int, Action] = {}
        for e in view.needed():
            if e in resident:
                placement[e] = Action.HIT
            elif free > 0:  # first come: fill the empty slots once, then the set is static
                placement[e] = Action.LOAD
                free -= 1
            else:
                placement[e] = Action.CPU
        return Plan.per_expert(view, placement)
