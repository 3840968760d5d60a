"""Assemble a smolmoe checkpoint: the dense SmolLM2 weights, corrected and cut as a healing recipe says.

Where it sits: `python -m smoe build-smolmoe` (and the DAG's `smolmoe` rule) runs it on the CPU in about a
minute: dequantise the pinned GGUF (`dense`), add each LoRA correction B@A (float32) to its dense weight,
permute each FFN's neurons by the recipe's order, and cut them into the shared expert and the routed
experts. The output is a normal HF checkpoint directory of the registered `smolmoe` architecture: config,
tokenizer, and safetensors with one tensor per routed expert, so single experts load lazily.

A recipe is one safetensors file (`smoe/smolmoe/recipes/*.safetensors`, written by `heal`): per layer
`mlp.order` [N] int32, `mlp.gate.weight` [E,H] float32, and `lora_A` [r,in] / `lora_B` [out,r] float16 for
the FFN's and the attention's projections; its metadata holds the topology as JSON.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError
from .heal import ATTN, FFN
from .modeling import SmolMoeConfig, register
from .moefy import Topology

log = logging.getLogger(__name__)
RECIPES = Path(__file__).parent / "recipes"
DEFAULT_RECIPE = RECIPES / "smolmoe-135m.safetensors"


def save_recipe(path: Path, tensors: dict[str, torch.Tensor], topo: Topology, info: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    meta = {"topology": json.dumps({"num_experts": topo.num_experts, "top_k": topo.top_k, "shared": topo.shared}),
            "info": json.dumps(info)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def load_recipe(path: str | Path) -> tuple[dict[str, torch.Tensor], Topology, dict]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"recipe {str(path)!r} not found; committed recipes: "
                              f"{', '.join(p.name for p in sorted(RECIPES.glob('*.safetensors'))) or 'none'}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "topology" not in meta:
        raise CheckpointError(f"{path} has no topology metadata: not a smolmoe recipe")
    return tensors, Topology(**json.loads(meta["topology"])), json.loads(meta.get("info", "{}"))


def corrected(weight: torch.Tensor, recipe: dict, key: str) -> torch.Tensor:
    """weight [out,in] + B@A in float32 (the recipe's correction of `key`)."""
    a, b = recipe[f"{key}.lora_A"].float(), recipe[f"{key}.lora_B"].float()
    return weight.float() + b @ a


def moe_state_dict(dense, recipe: dict, topo: Topology) -> dict[str, torch.Tensor]:
    """The smolmoe state dict (float32, per-expert keys, lm head tied) from a dense Llama and a recipe."""
    sd = {k: v.float() for k, v in dense.state_dict().items() if ".mlp." not in k and k != "lm_head.weight"}
    for i, layer in enumerate(dense.model.layers):
        p = f"model.layers.{i}"
        for n in ATTN:
            sd[f"{p}.self_attn.{n}.weight"] = corrected(getattr(layer.self_attn, n).weight, recipe, f"{p}.self_attn.{n}")
        order = recipe[f"{p}.mlp.order"].long()
        gate, up, down = (corrected(getattr(layer.mlp, n).weight, recipe, f"{p}.mlp.{n}") for n in FFN)
        gate, up, down = gate[order], up[order], down[:, order]  # neurons in [shared | expert 0 | ...] order
        S, I = topo.shared, topo.expert_size(len(order))
        sd[f"{p}.mlp.gate.weight"] = recipe[f"{p}.mlp.gate.weight"].float()
        sd[f"{p}.mlp.shared_expert.gate_proj.weight"] = gate[:S]
        sd[f"{p}.mlp.shared_expert.up_proj.weight"] = up[:S]
        sd[f"{p}.mlp.shared_expert.down_proj.weight"] = down[:, :S]
        for e in range(topo.num_experts):
            cols = slice(S + e * I, S + (e + 1) * I)
            sd[f"{p}.mlp.experts.{e}.gate_proj.weight"] = gate[cols]
            sd[f"{p}.mlp.experts.{e}.up_proj.weight"] = up[cols]
            sd[f"{p}.mlp.experts.{e}.down_proj.weight"] = down[:, cols]
    return {k: v.contiguous() for k, v in sd.items()}


def moe_config(dense_config, topo: Topology, ffn: int) -> SmolMoeConfig:
    register()
    fields = dense_config.to_dict()
    for k in ("architectures", "model_type", "transformers_version", "_name_or_path", "dtype"):
        fields.pop(k, None)
    return SmolMoeConfig(**fields, num_experts=topo.num_experts, num_experts_per_tok=topo.top_k,
                         moe_intermediate_size=topo.expert_size(ffn), shared_expert_intermediate_size=topo.shared,
                         architectures=["SmolMoeForCausalLM"])


def assemble(dense, tok, recipe: dict, topo: Topology, out: str | Path, info: dict | None = None) -> Path:
    """Write the smolmoe checkpoint of (dense, recipe) to `out` (via a temporary folder: never half-written)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = moe_config(dense.config, topo, dense.config.intermediate_size)
    config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    save_file(moe_state_dict(dense, recipe, topo), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "smolmoe.json").write_text(json.dumps({"topology": topo.name, **(info or {})}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def build_smolmoe(out: str | Path, resources: str | Path = "resources", recipe_path: str | Path = DEFAULT_RECIPE,
                  dense_out: str | Path | None = None, top_k: int | None = None) -> Path:
    """The smolmoe-135m checkpoint from the pinned GGUF and a committed recipe (and, if asked, the dense one);
    `top_k`: route each token to this many experts instead of the recipe's own (the routers and corrections
    stay those healed at the recipe's top-k; `smolmoe.json` says so)."""
    from .dense import load_dense

    recipe, topo, info = load_recipe(recipe_path)
    if top_k is not None and top_k != topo.top_k:
        info = {**info, "healed_top_k": topo.top_k}
        topo = topo.with_top_k(top_k)
    dense, tok = load_dense(resources)
    log.info("assembling %s (%s) into %s", Path(recipe_path).name, topo.name, out)
    path = assemble(dense, tok, recipe, topo, out, {"recipe": Path(recipe_path).name, **info})
    if dense_out is not None:  # after assembly, which replaces `out` whole (dense_out may lie inside it)
        dense.save_pretrained(dense_out)
        tok.save_pretrained(dense_out)
    return path
