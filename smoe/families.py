"""Family adapters: what differs between MoE architectures, stated once per family.

Where it sits: `checkpoint.py` uses an adapter to name the tensors of one routed expert on disk and to map
skeleton keys onto the transformers 5.x module tree; `experts.py` uses it to turn router logits into the
scores a policy sees and to weight a set of computed experts the way the family's own router would.

The HF MoE block keeps doing what it does (router, top-k, shared experts and their gate, dense first
layers); the runtime only replaces the block's `experts` module. So a family adapter needs to state just:
- `scores`: router logits [T,E] -> the per-expert scores the router ranks by (softmax or sigmoid);
- `weights`: scores [T,E] and a mask of computed experts [T,E] -> gate weights [T,E], following the
  family's rule (renormalise over the computed set or not, routed scaling factor). Used only when a
  policy changes a token's expert set; an unchanged set keeps the HF router's own weights bit for bit;
- the on-disk names of one expert's gate/up/down matrices, and skeleton key renames.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .errors import UnsupportedArchitecture


@dataclass(frozen=True)
class Family:
    model_type: str
    scoring: str  # "softmax" | "sigmoid"
    always_renorm: bool = False  # Mixtral renormalises whatever norm_topk_prob says
    uses_norm_topk_prob: bool = True  # DeepSeek-V2's router ignores norm_topk_prob
    moe_prefix: str = "model.layers.{layer}.mlp"  # on-disk prefix of a layer's MoE block
    expert_names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    skeleton_renames: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (disk regex, model)

    # ---- routing semantics -------------------------------------------------------------------------
    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [T,E] -> scores [T,E] float32, exactly as the family's router computes them."""
        logits = logits.float()
        return logits.sigmoid() if self.scoring == "sigmoid" else logits.softmax(dim=-1)

    def renormalises(self, config) -> bool:
        if self.always_renorm:
            return True
        return bool(self.uses_norm_topk_prob and getattr(config, "norm_topk_prob", False))

    def scaling(self, config) -> float:
        return float(getattr(config, "routed_scaling_factor", 1.0) or 1.0)

    def weights(self, scores: torch.Tensor, computed: torch.Tensor, config) -> torch.Tensor:
        """Gate weights of a computed expert set.

        scores [T,E] float32; computed [T,E] bool -> weights [T,E] float32 (zero where not computed).
        A computed expert is weighted by its own router score; renormalised over the computed set when the
        family renormalises its top-k (Mixtral always; Qwen/OLMoE/DeepSeek-V3 when norm_topk_prob), then
        multiplied by the routed scaling factor (DeepSeek). This is the rule the SMoE paper's code applies
        to a substitute (its own probability, `routing_weights.gather(1, topk_idx)`).
        """
        return self.rule(config)(scores, computed)

    def rule(self, config) -> "WeightRule":
        """`weights` with the config's settings read once (a decode layer applies the rule without them)."""
        return WeightRule(self.renormalises(config), self.scaling(config))

    # ---- checkpoint naming --------------------------------------------------------------------------
    def expert_keys(self, layer: int, expert: int) -> tuple[str, str, str]:
        """On-disk keys of one expert's (gate [I,H], up [I,H], down [H,I]) in per-expert checkpoints."""
        prefix = self.moe_prefix.format(layer=layer)
        return tuple(f"{prefix}.experts.{expert}.{n}.weight" for n in self.expert_names)  # type: ignore

    def fused_keys(self, layer: int) -> tuple[str, str]:
        """On-disk keys of a fused layout (gate_up [E,2I,H], down [E,H,I]), as transformers 5 holds them."""
        prefix = self.moe_prefix.format(layer=layer)
        return f"{prefix}.experts.gate_up_proj", f"{prefix}.experts.down_proj"

    def is_routed_expert_key(self, key: str) -> bool:
        return re.search(r"\.experts\.(\d+\.|gate_up_proj|down_proj)", key) is not None

    def to_model_key(self, key: str) -> str:
        for pattern, repl in self.skeleton_renames:
            key = re.sub(pattern, repl, key)
        return key


@dataclass(frozen=True)
class WeightRule:
    """A family's gate-weight rule for one config (`Family.weights`): scores [T,E] float32, computed [T,E] bool ->
    weights [T,E] float32, renormalised over the computed set when `renorm`, times `scale`."""

    renorm: bool
    scale: float

    def __call__(self, scores: torch.Tensor, computed: torch.Tensor) -> torch.Tensor:
        w = scores * computed
        if self.renorm:
            w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
        return w if self.scale == 1.0 else w * self.scale  # x * 1.0 is x: one op fewer where nothing scales


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in [
        Family("qwen2_moe", "softmax"),
        Family("qwen3_moe", "softmax"),
        Family("olmoe", "softmax"),
        Family(
            "mixtral",
            "softmax",
            always_renorm=True,
            moe_prefix="model.layers.{layer}.block_sparse_moe",
            expert_names=("w1", "w3", "w2"),
            skeleton_renames=((r"\.block_sparse_moe\.", ".mlp."),),
        ),
        Family("deepseek_v2", "softmax", uses_norm_topk_prob=False),
        Family("deepseek_v3", "sigmoid"),
        Family("smolmoe", "softmax"),  # renormalised top-k times routed_scaling_factor (= k): see smolmoe/modeling.py
    ]
}


def family_for(config) -> Family:
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedArchitecture(
            f"model_type {model_type!r} is not supported; supported families: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]
