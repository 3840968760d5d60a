"""The `smolmoe` architecture: a Llama decoder whose FFNs are fine-grained MoE blocks with shared experts.

Where it sits: smolmoe-135m (built by `smoe.smolmoe.assemble` from SmolLM2-135M) is a checkpoint of this
architecture. `register()` makes it a first-class transformers architecture (AutoConfig,
AutoModelForCausalLM, and the per-expert -> fused checkpoint conversion that Qwen2-MoE uses), so
`from_pretrained` and the offloading runtime load it like any downloaded MoE checkpoint, with no remote code.

The MoE block computes, for a token x (H = hidden, I = one routed expert's width):
  shared(x) + sum over the top-k experts e of  w_e(x) * expert_e(x),
  w_e = softmax(router(x))_e / sum_{top-k} softmax(router(x)) * routed_scaling_factor.
With routed_scaling_factor = k the weights average 1, so a uniform router reproduces the sum of the
experts' outputs: the dense FFN the experts were cut from, restricted to the chosen neurons. The runtime's
family rule (`families.py`, "smolmoe": softmax, renormalised, scaled) weights any computed set the same way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaMLP,
    LlamaModel,
    LlamaPreTrainedModel,
)
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeExperts

MODEL_TYPE = "smolmoe"


@strict
class SmolMoeConfig(LlamaConfig):
    """LlamaConfig plus the MoE topology. `intermediate_size` keeps the dense FFN width the MoE was cut from."""

    model_type = MODEL_TYPE
    num_experts: int = 64
    num_experts_per_tok: int = 8
    moe_intermediate_size: int = 18
    shared_expert_intermediate_size: int = 384
    norm_topk_prob: bool = True
    routed_scaling_factor: float | None = None  # None: num_experts_per_tok

    def __post_init__(self, **kwargs):
        if self.routed_scaling_factor is None:
            self.routed_scaling_factor = float(self.num_experts_per_tok)
        super().__post_init__(**kwargs)


class SmolMoeRouter(nn.Module):
    """hidden [T,H] -> (logits [T,E], weights [T,k], indices [T,k]); named `gate` in the block, as in Qwen2-MoE."""

    def __init__(self, config: SmolMoeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.scale = config.routed_scaling_factor
        self.norm_topk_prob = config.norm_topk_prob
        self.weight = nn.Parameter(torch.zeros(config.num_experts, config.hidden_size))

    def forward(self, hidden_states):
        hidden_states = hidden_states.reshape(-1, self.weight.shape[1])
        logits = F.linear(hidden_states, self.weight)  # [T,E]
        probs = logits.softmax(dim=-1, dtype=torch.float)
        top, idx = torch.topk(probs, self.top_k, dim=-1)  # [T,k]
        if self.norm_topk_prob:
            top = top / top.sum(dim=-1, keepdim=True)
        return logits, (top * self.scale).to(logits.dtype), idx


class SmolMoeBlock(nn.Module):
    def __init__(self, config: SmolMoeConfig):
        super().__init__()
        self.gate = SmolMoeRouter(config)
        self.experts = Qwen2MoeExperts(config)  # gate_up_proj [E,2I,H], down_proj [E,H,I]
        self.shared_expert = LlamaMLP(config)
        shared = config.shared_expert_intermediate_size
        self.shared_expert.gate_proj = nn.Linear(config.hidden_size, shared, bias=False)
        self.shared_expert.up_proj = nn.Linear(config.hidden_size, shared, bias=False)
        self.shared_expert.down_proj = nn.Linear(shared, config.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        flat = hidden_states.reshape(-1, shape[-1])  # [T,H]
        _, weights, idx = self.gate(flat)
        out = self.experts(flat, idx, weights) + self.shared_expert(flat)
        return out.reshape(shape)


class SmolMoeDecoderLayer(LlamaDecoderLayer):
    def __init__(self, config: SmolMoeConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.mlp = SmolMoeBlock(config)


class SmolMoePreTrainedModel(LlamaPreTrainedModel):
    config_class = SmolMoeConfig
    _no_split_modules = ["SmolMoeDecoderLayer"]
    _can_record_outputs = {"hidden_states": SmolMoeDecoderLayer}

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, Qwen2MoeExperts):
            nn.init.normal_(module.gate_up_proj, mean=0.0, std=std)
            nn.init.normal_(module.down_proj, mean=0.0, std=std)
        elif isinstance(module, SmolMoeRouter):
            nn.init.normal_(module.weight, mean=0.0, std=std)


class SmolMoeModel(SmolMoePreTrainedModel, LlamaModel):
    def __init__(self, config: SmolMoeConfig):
        super().__init__(config)
        self.layers = nn.ModuleList(
            [SmolMoeDecoderLayer(config, i) for i in range(config.num_hidden_layers)]
        )
        self.post_init()


class SmolMoeForCausalLM(SmolMoePreTrainedModel, LlamaForCausalLM):
    def __init__(self, config: SmolMoeConfig):
        super().__init__(config)
        self.model = SmolMoeModel(config)
        self.post_init()


_registered = False


def register() -> None:
    """Register `smolmoe` with transformers' Auto classes and checkpoint conversion (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers.conversion_mapping import (
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )

    AutoConfig.register(MODEL_TYPE, SmolMoeConfig, exist_ok=True)
    AutoModelForCausalLM.register(SmolMoeConfig, SmolMoeForCausalLM, exist_ok=True)
    register_checkpoint_conversion_mapping(MODEL_TYPE, get_checkpoint_conversion_mapping("qwen2_moe"), overwrite=True)
    _registered = True
