"""The host store: every routed expert in host memory, one contiguous buffer per expert.

Where it sits: filled once by `loader.py`, one expert at a time from the safetensors files; read by the
slot pool (host->device copies) and by the CPU executor. Per MoE layer one tensor [E, 3*I*H], pinned
when a GPU is present so that a copy of one expert is a single DMA at full PCIe speed.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .checkpoint import ExpertShape


class HostStore:
    def __init__(self, layers: tuple[int, ...], num_experts: int, shape: ExpertShape, dtype: torch.dtype, pin: bool):
        self.shape = shape
        self.dtype = dtype
        self.num_experts = num_experts
        self.pinned = pin
        # per layer: [E, 3*I*H]
        self.data: dict[int, torch.Tensor] = {
            layer: torch.empty(num_experts, shape.numel, dtype=dtype, pin_memory=pin) for layer in layers
        }

    def fill(self, read: Callable[[int, int, torch.Tensor], None], desc: str = "experts -> host") -> None:
        """read(layer, expert, out[3*I*H]) writes one expert; called once per expert."""
        total = len(self.data) * self.num_experts
        with tqdm(total=total, desc=desc, unit="expert", disable=total < 512, leave=False) as bar:
            for layer, buf in self.data.items():
                for e in range(self.num_experts):
                    read(layer, e, buf[e])
                    bar.update()

    def expert(self, layer: int, e: int) -> torch.Tensor:
        return self.data[layer][e]

    @property
    def expert_bytes(self) -> int:
        return self.shape.numel * self.dtype.itemsize


def expert_forward(x: torch.Tensor, w: torch.Tensor, shape: ExpertShape, act) -> torch.Tensor:
    """One SwiGLU expert, computed as the HF experts module does: x [n,H], w [3*I*H] -> [n,H]."""
    I, H = shape.intermediate, shape.hidden
    gate, up = torch.nn.functional.linear(x, w[: 2 * I * H].view(2 * I, H)).chunk(2, dim=-1)
    return torch.nn.functional.linear(act(gate) * up, w[2 * I * H :].view(H, I))
