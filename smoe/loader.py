"""Build the device skeleton of an HF MoE model with its routed experts left out.

Where it sits: after `Checkpoint` is open and before the host store is filled. The model is instantiated
from its config with parameters on the meta device (so nothing is allocated), each MoE block's `experts`
module is dropped, and every remaining tensor (embeddings, attention, norms, routers, shared experts,
dense layers, lm head) is read from the safetensors files straight onto the device. A skeleton tensor the
checkpoint lacks is an error, except a tied lm head.
"""
from __future__ import annotations

import logging

import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from torch import nn
from transformers import AutoModelForCausalLM

from .checkpoint import Checkpoint, ExpertShape
from .errors import CheckpointError

log = logging.getLogger(__name__)


def moe_blocks(model) -> dict[int, nn.Module]:
    """Decoder layer index -> MoE block (a module with a router `gate` and routed `experts`)."""
    out = {}
    for i, layer in enumerate(model.model.layers):
        mlp = getattr(layer, "mlp", None)
        if mlp is not None and hasattr(mlp, "experts") and hasattr(mlp, "gate"):
            out[i] = mlp
    return out


def expert_shape(block: nn.Module) -> tuple[int, ExpertShape]:
    """(E, shape) of a block's routed experts, read off its (meta) fused parameters."""
    gate_up = block.experts.gate_up_proj  # [E, 2I, H]
    E, two_i, H = gate_up.shape
    return E, ExpertShape(hidden=H, intermediate=two_i // 2)


def skeleton_on_meta(ckpt: Checkpoint, dtype: torch.dtype):
    """The model with parameters on the meta device (buffers such as rotary tables are real, on the CPU)."""
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(ckpt.config, dtype=dtype)
    return model.eval()


def _keep_fp32(model, key: str) -> bool:
    patterns = list(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    patterns += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    return any(p in key for p in patterns)


def load_skeleton(model, ckpt: Checkpoint, device: torch.device, dtype: torch.dtype) -> int:
    """Load every non-expert tensor onto `device`; returns the skeleton's bytes there."""
    disk = {ckpt.family.to_model_key(k): k for k in ckpt.skeleton_keys()}
    wanted = [k for k, _ in model.named_parameters()] + [
        k for k, _ in model.named_buffers() if k in model.state_dict()
    ]
    tied = dict(getattr(model, "_tied_weights_keys", None) or {}) if ckpt.config.get_text_config().tie_word_embeddings else {}
    missing = []
    nbytes = 0
    for key in wanted:
        if key in tied and key not in disk:
            continue
        if key not in disk:
            missing.append(key)
            continue
        t = ckpt.read(disk[key])
        if t.is_floating_point():
            t = t.to(torch.float32 if _keep_fp32(model, key) else dtype)
        set_module_tensor_to_device(model, key, device, value=t)
        nbytes += t.numel() * t.element_size()
    if missing:
        raise CheckpointError(
            f"{len(missing)} skeleton tensors are missing from {str(ckpt.path)!r}, e.g. {missing[:3]}"
        )
    for key, target in tied.items():
        if key not in disk:
            module_path, _, name = key.rpartition(".")
            tgt_module, _, tgt_name = target.rpartition(".")
            setattr(model.get_submodule(module_path), name, getattr(model.get_submodule(tgt_module), tgt_name))
    unused = sorted(set(disk) - set(wanted))
    if unused:
        log.info("ignored %d checkpoint tensors the model does not use, e.g. %s", len(unused), unused[:3])
    for module in model.modules():  # non-persistent buffers (rotary tables) were built on the CPU
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.device != device:
                module._buffers[name] = buf.to(device)
    return nbytes
