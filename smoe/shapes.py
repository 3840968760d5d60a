"""The paper's models by shape, with random weights generated where they are used (no checkpoint on disk).

Where it sits: an alternative to `Checkpoint` as the runtime's weight source (`Runtime(RandomSource(...))`),
for measuring at paper scale without the real weights (issue 5). `RandomSource` has the methods of
`Checkpoint` that loading uses: the skeleton is drawn on the runtime's device, each routed expert is drawn
on that device too and copied into the host store, so a 57B-parameter shape needs no disk and no
host-side random number generation. Values are seeded by tensor name (the same source gives the same
weights every time). With random weights the router is meaningless: runs at paper scale replay recorded
routing (`smoe.replay`).

The three shapes are written as Qwen2-MoE configs (digest section 3; one family adapter covers them):
- `qwen2-57b-a14b-shape`: Qwen2-57B-A14B's own architecture and sizes.
- `deepseek-moe-16b-shape`: deepseek-moe-16b's sizes (first layer dense, FFN 10944; 64 routed experts of
  1408, top-6; 2 shared experts as one shared FFN of 2 x 1408; MHA 16 heads; vocabulary 102400). Differs
  from the real model in Qwen2-MoE's sigmoid gate on the shared expert and its q/k/v biases: a few
  thousand parameters per layer, nothing that moves memory or PCIe traffic.
- `xverse-moe-a4.2b-shape`: XVERSE-MoE-A4.2B's sizes (64 routed experts of 1728, top-6, 2 shared as one
  FFN of 3456, 32 heads, vocabulary 100534), with the same two differences.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from accelerate import init_empty_weights
from transformers import AutoModelForCausalLM, Qwen2MoeConfig

from .checkpoint import ExpertShape
from .errors import CheckpointError
from .families import family_for

_COMMON = dict(num_hidden_layers=28, num_experts=64, norm_topk_prob=False, max_position_embeddings=8192,
               tie_word_embeddings=False, rope_theta=1e6, rms_norm_eps=1e-6, hidden_act="silu")
SHAPES: dict[str, dict] = {
    "deepseek-moe-16b-shape": dict(hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
                                   shared_expert_intermediate_size=2 * 1408, num_experts_per_tok=6,
                                   num_attention_heads=16, num_key_value_heads=16, vocab_size=102400,
                                   mlp_only_layers=[0]),
    "xverse-moe-a4.2b-shape": dict(hidden_size=2560, intermediate_size=2 * 1728, moe_intermediate_size=1728,
                                   shared_expert_intermediate_size=2 * 1728, num_experts_per_tok=6,
                                   num_attention_heads=32, num_key_value_heads=32, vocab_size=100534),
    "qwen2-57b-a14b-shape": dict(hidden_size=3584, intermediate_size=18944, moe_intermediate_size=2560,
                                 shared_expert_intermediate_size=20480, num_experts_per_tok=8,
                                 num_attention_heads=28, num_key_value_heads=4, vocab_size=151936),
}


def shape_config(name: str, **overrides) -> Qwen2MoeConfig:
    """The config of a named shape; `overrides` (e.g. num_hidden_layers=4) shrink it for tests."""
    if name not in SHAPES:
        raise CheckpointError(f"unknown model shape {name!r}; accepted: {', '.join(SHAPES)}")
    return Qwen2MoeConfig(**(_COMMON | SHAPES[name] | overrides), dtype="bfloat16")


class RandomSource:
    """Random weights of a config, drawn on `device`; quacks like `Checkpoint` for the runtime's loading.

    Norm weights are ones and biases zeros; every other tensor is N(0, 0.02^2) (the config's
    initializer_range), seeded by (seed, tensor name) so any tensor is reproducible on its own."""

    def __init__(self, config, device: str | torch.device = "cpu", seed: int = 0, name: str | None = None):
        self.config = config
        self.family = family_for(config)
        self.device = torch.device(device)
        self.seed = seed
        self.path = Path(f"random:{name or config.model_type}")  # names the source in logs and records
        dtype = getattr(config, "dtype", None) or torch.bfloat16
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        with init_empty_weights(include_buffers=False):
            meta = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
        self._shapes = {k: tuple(p.shape) for k, p in meta.named_parameters()
                        if not self.family.is_routed_expert_key(k)}
        self.std = float(getattr(config, "initializer_range", 0.02))

    @classmethod
    def named(cls, name: str, device="cpu", seed: int = 0, **overrides) -> "RandomSource":
        return cls(shape_config(name, **overrides), device, seed, name)

    def _generator(self, key: str) -> torch.Generator:
        digest = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
        return torch.Generator(device=self.device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)

    def skeleton_keys(self) -> list[str]:
        return list(self._shapes)

    def read(self, key: str) -> torch.Tensor:
        if key not in self._shapes:
            raise CheckpointError(f"tensor {key!r} is not part of the {self.path} skeleton")
        shape = self._shapes[key]
        if key.endswith("norm.weight"):
            return torch.ones(shape, dtype=self.dtype, device=self.device)
        if key.endswith(".bias"):
            return torch.zeros(shape, dtype=self.dtype, device=self.device)
        t = torch.empty(shape, dtype=torch.float32, device=self.device)
        return t.normal_(0.0, self.std, generator=self._generator(key)).to(self.dtype)

    def read_expert(self, layer: int, expert: int, out: torch.Tensor, shape: ExpertShape) -> None:
        """One routed expert [3*I*H] (gate, up, down, as `Checkpoint.read_expert` lays them out) into `out`."""
        w = torch.empty(shape.numel, dtype=torch.float32, device=self.device)
        w.normal_(0.0, self.std, generator=self._generator(f"layer{layer}.expert{expert}"))
        out.copy_(w.to(out.dtype))

    def tokenizer_present(self) -> bool:
        return False
