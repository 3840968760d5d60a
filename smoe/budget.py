"""Device-memory accounting: how many expert slots a budget buys.

Where it sits: computed from the config and the skeleton alone, before any device allocation, so a
CPU-only run and a GPU run with the same budget get the same slot count (and so the same hit rates).

  budget = skeleton (everything but routed experts) + KV cache reserve + activation reserve + C * expert
A budget whose C is below what one layer may need at once (top-k x batch, at most E) is refused with the
minimum stated.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import BudgetError

GiB = 1024**3
ACTIVATION_RESERVE_BYTES = 256 * 1024**2  # workspace, logits, temporaries; fixed so CPU and GPU agree


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    """KV-cache bytes one token adds over all layers, as transformers 5 caches them."""
    layers = config.num_hidden_layers
    if getattr(config, "kv_lora_rank", None):  # DeepSeek MLA caches the compressed latent and rope key
        return layers * (config.kv_lora_rank + config.qk_rope_head_dim) * dtype_bytes
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return layers * 2 * heads * head_dim * dtype_bytes


@dataclass(frozen=True)
class MemoryPlan:
    capacity: int  # expert slots
    skeleton_bytes: int
    kv_reserve_bytes: int
    activation_reserve_bytes: int
    expert_bytes: int
    min_slots: int
    budget_bytes: int | None

    @property
    def device_bytes(self) -> int:
        return self.skeleton_bytes + self.kv_reserve_bytes + self.activation_reserve_bytes + self.pool_bytes

    @property
    def pool_bytes(self) -> int:
        return self.capacity * self.expert_bytes

    def asdict(self) -> dict:
        return asdict(self)


def plan_memory(
    *,
    config,
    skeleton_bytes: int,
    expert_bytes: int,
    dtype_bytes: int,
    num_experts: int,
    num_moe_layers: int,
    top_k: int,
    batch: int,
    kv_tokens: int,
    budget_gb: float | None = None,
    cache_experts: int | None = None,
    gathered: bool = False,
) -> MemoryPlan:
    """Slots for a budget (or a slot count), after the skeleton, the KV cache and the activations. With
    `gathered` (decode's resident experts gathered out of their slots for one batched product: the runtime's
    `grouped_experts='gather'`) the activations also hold one layer's gathered experts (top-k x batch), a transient
    copy beside the slots."""
    if (budget_gb is None) == (cache_experts is None):
        raise BudgetError("give exactly one of --budget-gb and --cache-experts")
    min_slots = min(num_experts, top_k * batch)
    total_experts = num_experts * num_moe_layers
    kv = kv_bytes_per_token(config, dtype_bytes) * kv_tokens
    activations = ACTIVATION_RESERVE_BYTES + (min_slots * expert_bytes if gathered else 0)
    fixed = skeleton_bytes + kv + activations
    if cache_experts is not None:
        if cache_experts < min_slots:
            raise BudgetError(
                f"--cache-experts {cache_experts} is too small: one layer may need {min_slots} experts at once "
                f"(top-k {top_k} x batch {batch}, at most {num_experts})"
            )
        capacity = min(cache_experts, total_experts)
        budget_bytes = None
    else:
        if budget_gb <= 0:
            raise BudgetError(f"--budget-gb must be positive, got {budget_gb}")
        budget_bytes = int(budget_gb * GiB)
        capacity = min((budget_bytes - fixed) // expert_bytes, total_experts) if budget_bytes > fixed else 0
        if capacity < min_slots:
            need = fixed + min_slots * expert_bytes
            raise BudgetError(
                f"--budget-gb {budget_gb} is too small: the skeleton needs {skeleton_bytes / GiB:.3f} GiB, the KV "
                f"cache reserve {kv / GiB:.3f} GiB, activations {activations / GiB:.3f} GiB and one "
                f"layer's {min_slots} experts {min_slots * expert_bytes / GiB:.3f} GiB; the minimum is "
                f"{need / GiB:.3f} GiB"
            )
    return MemoryPlan(
        capacity=int(capacity),
        skeleton_bytes=skeleton_bytes,
        kv_reserve_bytes=kv,
        activation_reserve_bytes=activations,
        expert_bytes=expert_bytes,
        min_slots=min_slots,
        budget_bytes=budget_bytes,
    )
