"""The host store: every routed expert in host memory, one contiguous buffer per expert.

Where it sits: filled once by `loader.py`, one expert at a time from the safetensors files; read by the
slot pool (host->device copies) and by the CPU executor. Per MoE layer one tensor [E, 3*I*H], pinned
when a GPU is present so that a copy of one expert is a single DMA at full PCIe speed.

Pinning registers the tensor's own pages with the driver (`cudaHostRegister`) rather than using
`pin_memory=True`, whose caching allocator rounds every block up to a power of two: Qwen2-57B's 28 layers of
3.5 GB would take 112 GB of locked memory instead of 98.6 GB.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from itertools import chain

import numpy as np
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
        if pin:
            locked = {layer: _locked_empty(num_experts * shape.numel, dtype) for layer in layers}
            self.data: dict[int, torch.Tensor] = {layer: t.view(num_experts, shape.numel) for layer, (t, _) in locked.items()}
            weakref.finalize(self, _unregister, [ptr for _, ptr in locked.values()])  # before the memory is freed
        else:
            self.data = {layer: torch.empty(num_experts, shape.numel, dtype=dtype) for layer in layers}

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


PAGE = 4096


def _locked_empty(numel: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """A page-locked [numel] tensor and the pointer to unregister. Whole pages of its own buffer are locked,
    so no two stores ever register the same page."""
    nbytes = -(-numel * dtype.itemsize // PAGE) * PAGE
    raw = torch.empty(nbytes + PAGE, dtype=torch.uint8)
    start = -raw.data_ptr() % PAGE
    rc = torch.cuda.cudart().cudaHostRegister(raw.data_ptr() + start, nbytes, 0)
    if int(rc) != 0:
        raise MemoryError(f"cudaHostRegister of {nbytes / 1e9:.2f} GB failed (CUDA error {int(rc)}): host memory "
                          "cannot be locked for the expert store")
    return raw[start:start + numel * dtype.itemsize].view(dtype), raw.data_ptr() + start


def _unregister(ptrs: list[int]) -> None:
    for ptr in ptrs:
        torch.cuda.cudart().cudaHostUnregister(ptr)


def expert_forward(x: torch.Tensor, w: torch.Tensor, shape: ExpertShape, act) -> torch.Tensor:
    """One SwiGLU expert, computed as the HF experts module does: x [n,H], w [3*I*H] -> [n,H]."""
    I, H = shape.intermediate, shape.hidden
    gate, up = torch.nn.functional.linear(x, w[: 2 * I * H].view(2 * I, H)).chunk(2, dim=-1)
    return torch.nn.functional.linear(act(gate) * up, w[2 * I * H :].view(H, I))


def weighted_expert_sum(x: torch.Tensor, jobs: Sequence[tuple[int, Sequence[int]]],
                        weights: Callable[[int], torch.Tensor], w: np.ndarray, shape: ExpertShape, act) -> torch.Tensor:
    """A layer's CPU experts, summed: x [T,H], jobs of (expert, its token rows), weights(e) -> expert e's [3*I*H],
    gate weights w [T,E] float32 -> the sum over the jobs of gate weight x the expert's output on its rows [T,H],
    added in float32, in x's dtype.

    The rows are gathered, weighted and added once for all the jobs, so an expert costs its forward and a slice.
    Against doing that per expert, this cut the worker's time per CPU expert by 10-14% and HybriMoE's and
    CPU-assist's steps by 9-12% on an H100's host (`results/gpu/combine_ab_h100_s60/`); each torch call also needs
    the interpreter lock, which the decoding thread holds between its own calls (`benchmarks/cpu_worker.py` times
    both forms, alone and beside a busy thread)."""
    sizes = [len(rows) for _, rows in jobs]
    rows = np.fromiter(chain.from_iterable(r for _, r in jobs), dtype=np.int64, count=sum(sizes))  # [R]
    experts = np.repeat([e for e, _ in jobs], sizes)  # [R] each row's expert
    idx = torch.from_numpy(rows)  # [R]
    xs = x[idx].split(sizes)  # [n,H] per job
    ys = torch.cat([expert_forward(xe, weights(e), shape, act) for (e, _), xe in zip(jobs, xs)])  # [R,H]
    acc = torch.zeros(x.shape, dtype=torch.float32)  # [T,H]
    # [R,H] float32 by promotion; accumulate: a token row can be in several jobs. index_put_ rather than index_add_:
    # with two intra-op threads and other work on the cores, a small host index_add_ took up to 2 ms (index_put_ 2-8 us)
    acc.index_put_((idx,), ys * torch.from_numpy(w[rows, experts])[:, None], accumulate=True)
    return acc.to(x.dtype)


def grouped_forward(x: torch.Tensor, w: torch.Tensor, shape: ExpertShape, act) -> torch.Tensor:
    """Every token through each of n SwiGLU experts at once: x [T,H], w [n, 3*I*H] -> [n,T,H]."""
    I, H = shape.intermediate, shape.hidden
    n = w.shape[0]
    gate_up = w[:, : 2 * I * H].view(n, 2 * I, H)  # [n,2I,H]
    down = w[:, 2 * I * H :].view(n, H, I)  # [n,H,I]
    gate, up = torch.matmul(x, gate_up.transpose(1, 2)).chunk(2, dim=-1)  # [n,T,I] each
    return torch.matmul(act(gate) * up, down.transpose(1, 2))  # [n,T,H]
