"""SMoE reproduction harness: an expert-offloading runtime for Hugging Face MoE checkpoints.

Public API: `Runtime` (load a checkpoint under a device budget, generate with a policy), the policy
interface (`ExpertPolicy`, `Plan`, `Action`, `register_policy`, `make_policy`, `policy_names`).
"""
from .errors import SmoeError
from .plan import Action, LayerView, ModelInfo, Plan, PrefetchPlan
from .policy import ExpertPolicy, make_policy, policy_names, register_policy

__all__ = [
    "Action", "ExpertPolicy", "LayerView", "ModelInfo", "Plan", "PrefetchPlan", "Runtime", "SmoeError",
    "make_policy", "policy_names", "register_policy",
]


def __getattr__(name):  # the runtime pulls in transformers: import it only when asked for
    if name == "Runtime":
        from .runtime import Runtime

        return Runtime
    raise AttributeError(name)
