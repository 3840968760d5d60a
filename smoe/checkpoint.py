"""A local Hugging Face checkpoint directory, read lazily.

Where it sits: the first step of loading. `Checkpoint` opens `config.json` and the safetensors files'
headers (never the whole files), tells the skeleton tensors from the routed experts, and reads one expert
at a time for the host store. Both on-disk expert layouts are read: one tensor per expert
(`...experts.E.gate_proj.weight`, what HF checkpoints ship) and fused 3D tensors (`...experts.gate_up_proj`),
from which a single expert is sliced without reading the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig

from .errors import CheckpointError
from .families import Family, family_for
from .smolmoe.modeling import register as register_smolmoe

register_smolmoe()


@dataclass(frozen=True)
class ExpertShape:
    hidden: int  # H
    intermediate: int  # I

    @property
    def numel(self) -> int:
        """One expert's gate, up and down matrices, flattened into one buffer: 3*I*H elements."""
        return 3 * self.intermediate * self.hidden


class Checkpoint:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"model directory {str(self.path)!r} does not exist or is not a directory")
        if not (self.path / "config.json").is_file():
            raise CheckpointError(f"{str(self.path)!r} has no config.json: not a Hugging Face checkpoint directory")
        self.config = AutoConfig.from_pretrained(self.path)
        self.family: Family = family_for(self.config)
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{str(self.path)!r} holds no *.safetensors files")
        self.key_file: dict[str, Path] = {}
        for f in files:
            with safe_open(f, framework="pt") as h:
                for k in h.keys():
                    self.key_file[k] = f
        self._handles: dict[Path, object] = {}

    # ---- structure ---------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        dtype = getattr(self.config, "dtype", None)  # transformers 5 reads a config.json `torch_dtype` into `dtype`
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        return dtype or torch.float32

    def skeleton_keys(self) -> list[str]:
        return [k for k in self.key_file if not self.family.is_routed_expert_key(k)]

    def _handle(self, f: Path):
        if f not in self._handles:
            self._handles[f] = safe_open(f, framework="pt")
        return self._handles[f]

    def read(self, key: str) -> torch.Tensor:
        if key not in self.key_file:
            raise CheckpointError(f"tensor {key!r} is missing from the checkpoint in {str(self.path)!r}")
        return self._handle(self.key_file[key]).get_tensor(key)

    def expert_layout(self, layer: int) -> str:
        if all(k in self.key_file for k in self.family.expert_keys(layer, 0)):
            return "per-expert"
        if all(k in self.key_file for k in self.family.fused_keys(layer)):
            return "fused"
        raise CheckpointError(
            f"no routed experts of layer {layer} found in {str(self.path)!r}: looked for "
            f"{self.family.expert_keys(layer, 0)[0]!r} and {self.family.fused_keys(layer)[0]!r}"
        )

    def read_expert(self, layer: int, expert: int, out: torch.Tensor, shape: ExpertShape) -> None:
        """Read one expert into `out` [3*I*H]: rows of gate [I,H], then up [I,H], then down [H,I]."""
        I, H = shape.intermediate, shape.hidden
        gate_up = out[: 2 * I * H].view(2 * I, H)
        down = out[2 * I * H :].view(H, I)
        if self.expert_layout(layer) == "per-expert":
            g, u, d = (self.read(k) for k in self.family.expert_keys(layer, expert))
            if g.shape != (I, H) or u.shape != (I, H) or d.shape != (H, I):
                raise CheckpointError(
                    f"expert {expert} of layer {layer} has shapes {tuple(g.shape)}, {tuple(u.shape)}, "
                    f"{tuple(d.shape)}; the config implies gate/up {(I, H)} and down {(H, I)}"
                )
            gate_up[:I].copy_(g)
            gate_up[I:].copy_(u)
            down.copy_(d)
        else:
            gu_key, d_key = self.family.fused_keys(layer)
            gate_up.copy_(self._handle(self.key_file[gu_key]).get_slice(gu_key)[expert])
            down.copy_(self._handle(self.key_file[d_key]).get_slice(d_key)[expert])

    def tokenizer_present(self) -> bool:
        return any((self.path / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json"))

