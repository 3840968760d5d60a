"""all-gpu: every routed expert resident on the device, no offloading: the floor every offloading
policy is measured against. Rule: preload all experts; every routed expert is a hit. Refused when the
budget cannot hold them all."""
from __future__ import annotations

from smoe.budget import GiB
from smoe.errors import BudgetError
from smoe.plan import Action, ExpertKey, LayerView, ModelInfo, Plan
from smoe.policy import ExpertPolicy, register_policy


@register_policy("all-gpu")
class AllGPU(ExpertPolicy):
    def setup(self, model: ModelInfo, capacity: int) -> list[ExpertKey]:
        total = len(model.moe_layers) * model.num_experts
        if capacity < total:
            short = (total - capacity) * model.expert_bytes / GiB
            raise BudgetError(
                f"all-gpu needs all {total} routed experts resident, but the budget holds {capacity} expert slots; "
                f"it needs {short:.3f} GiB more (or --cache-experts {total})"
            )
        return [(layer, e) for layer in model.moe_layers for e in range(model.num_experts)]

    def plan(self, view: LayerView) -> Plan:
        return Plan.per_expert(view, {e: Action.HIT for e in view.needed()})
