"""Tiny random checkpoints of every supported family, written with `save_pretrained`.

Where it sits: the tests' models, and the quick demo's. Each is a real HF checkpoint directory
(config.json, model.safetensors with one tensor per expert, a byte-level tokenizer) built from the
family's own config class, so it exercises exactly the loading path a downloaded checkpoint takes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from .errors import UnsupportedArchitecture
from .smolmoe.modeling import register as register_smolmoe

register_smolmoe()

VOCAB = 260  # 256 bytes + specials
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)
TINY: dict[str, dict] = {
    "qwen2_moe": dict(num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=64, norm_topk_prob=False),
    "qwen3_moe": dict(num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                      head_dim=16, norm_topk_prob=True),
    "olmoe": dict(num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, intermediate_size=32),
    "mixtral": dict(num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2, intermediate_size=32),
    "deepseek_v2": dict(num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                        n_shared_experts=1, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=None,
                        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, routed_scaling_factor=1.5,
                        topk_method="group_limited_greedy", n_group=2, topk_group=1),
    "deepseek_v3": dict(num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                        n_shared_experts=1, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=24,
                        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, n_group=2, topk_group=1,
                        routed_scaling_factor=2.5, norm_topk_prob=True),
    "smolmoe": dict(num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                    shared_expert_intermediate_size=64),
}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with no merges: ids 0-255 are bytes, 256 <pad>, 257 <eos>."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({"<pad>": 256, "<eos>": 257})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def tiny_config(family: str, **overrides):
    if family not in TINY:
        raise UnsupportedArchitecture(f"no tiny config for {family!r}; available: {', '.join(sorted(TINY))}")
    kwargs = {**COMMON, **TINY[family], **overrides}
    return AutoConfig.for_model(family, **kwargs)


def make_tiny(
    family: str, out: str | Path, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu", **overrides
) -> Path:
    """Write a random checkpoint of `family` (tiny unless `overrides` say otherwise) to `out`; returns the path.
    `device` is where the random weights are drawn (a GPU draws a large one much faster)."""
    out = Path(out)
    config = tiny_config(family, **overrides)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():  # spread the routers so top-k choices are not near ties (logits of std ~4)
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 4.0 / config.hidden_size**0.5)
    model.save_pretrained(out)
    byte_tokenizer().save_pretrained(out)
    return out
