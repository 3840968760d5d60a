"""on-demand: layer-wise loading with no expert cache (DeepSpeed-Inference style offloading; Aminabadi
et al., SC22). Rule: every routed expert is copied to the device when its layer needs it and dropped
right after use, so nothing is kept for later layers or steps: the no-cache floor of offloading."""
from __future__ import annotations

from smoe.plan import Action, LayerView, Plan
from smoe.policy import ExpertPolicy, register_policy


@register_policy("on-demand")
class OnDemand(ExpertPolicy):
    def plan(self, view: LayerView) -> Plan:
        resident = view.cache.resident(view.layer)
        needed = view.needed()
        placement = {e: Action.HIT if e in resident else Action.LOAD for e in needed}
        return Plan.per_expert(view, placement, discard=needed)
