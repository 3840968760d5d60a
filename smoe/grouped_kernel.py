"""Decode's grouped expert products read straight from the device slot pool: one Triton kernel per projection.

The engine's grouped path (a decode layer's resident experts as one batched product) used to gather the
experts' weights out of their slots into one stacked tensor and run a batched matmul on it: for n experts of
B bytes that is 2nB of memory traffic for the copy and nB for the product, to compute with weights that are
already on the device. Here each program reads one block of rows of one expert's matrix where its slot keeps
it (the slot index is an input) and multiplies it with the layer's few token rows, so the weights are read
once: about a third of the traffic on a decode step, which reads every expert's weights once per token batch
and so is bound by that traffic.

    y = slot_grouped_forward(x, pool.data, slots, shape, act)   # x [T,H], slots [n] -> y [n,T,H]

It computes what `store.grouped_forward` computes on the gathered weights, with float32 accumulation
(`tests/test_grouped_kernel.py` checks it against that path in Triton's interpreter on the CPU; the GPU
benchmark `benchmarks/grouped_kernel.py` against the gathered path on the device). Needs Triton; `available()`
says whether the engine uses it on a device.
"""
from __future__ import annotations

import torch

from .checkpoint import ExpertShape

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU wheel of torch comes without Triton: the engine gathers instead
    triton = None

# rows of one weight matrix per program, reduction width per step, warps, software-pipeline stages
CONFIG = {"block_r": 64, "block_k": 128, "num_warps": 4, "num_stages": 4}


def available(device: torch.device) -> bool:
    """Whether the engine uses the kernel on `device`: Triton is installed and the device is a GPU. (With
    TRITON_INTERPRET=1 set before this module is imported, CPU tensors run in Triton's interpreter, for tests; it
    computes bfloat16 wrongly, so test in float16 or float32 there.)"""
    return triton is not None and device.type == "cuda"


if triton is not None:

    @triton.jit
    def _slot_rows_times_x(w_ptr, slots_ptr, x_ptr, out_ptr, slot_stride, part_offset, R, K, T, x_expert_stride,
                           BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr):
        """out[i, t, r] = sum_k W_i[r, k] * x_i[t, k], W_i the [R,K] row-major matrix at `part_offset` in slot
        slots[i] of w, x_i = x + i * x_expert_stride ([T,K]), out [n,T,R]. Program (i, block of BLOCK_R rows)."""
        i = tl.program_id(0)
        rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BR]
        ts = tl.arange(0, BLOCK_T)  # [BT]
        ks = tl.arange(0, BLOCK_K)  # [BK]
        slot = tl.load(slots_ptr + i).to(tl.int64)
        w_base = w_ptr + slot * slot_stride + part_offset
        x_base = x_ptr + i * x_expert_stride
        acc = tl.zeros((BLOCK_R, BLOCK_T), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + ks
            w = tl.load(w_base + rows[:, None] * K + kk[None, :],
                        mask=(rows[:, None] < R) & (kk[None, :] < K), other=0.0)  # [BR,BK]
            xt = tl.load(x_base + ts[None, :] * K + kk[:, None],
                         mask=(ts[None, :] < T) & (kk[:, None] < K), other=0.0)  # [BK,BT]
            acc = tl.dot(w, xt, acc)  # [BR,BT]
        out = out_ptr + i * T * R + ts[None, :] * R + rows[:, None]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < R) & (ts[None, :] < T))


def _rows_times_x(data: torch.Tensor, slots: torch.Tensor, x: torch.Tensor, part_offset: int, R: int, K: int,
                  x_expert_stride: int, config: dict) -> torch.Tensor:
    """[n,T,R] = each slot's [R,K] matrix at `part_offset` times its x rows ([T,K], x_expert_stride apart)."""
    n, T = slots.numel(), x.shape[-2]
    out = torch.empty(n, T, R, dtype=data.dtype, device=data.device)
    block_t = max(16, triton.next_power_of_2(T))  # tl.dot's smallest tile
    _slot_rows_times_x[(n, triton.cdiv(R, config["block_r"]))](
        data, slots, x, out, data.stride(0), part_offset, R, K, T, x_expert_stride,
        BLOCK_R=config["block_r"], BLOCK_K=config["block_k"], BLOCK_T=block_t, num_warps=config["num_warps"],
        num_stages=config["num_stages"])
    return out


def slot_grouped_forward(x: torch.Tensor, data: torch.Tensor, slots: torch.Tensor, shape: ExpertShape, act,
                         config: dict | None = None) -> torch.Tensor:
    """Every token through each of n SwiGLU experts, their weights read in place from their slots:
    x [T,H], data [C, 3*I*H] (the slot pool), slots [n] int64 on data's device -> [n,T,H]. The slot layout is
    the store's: gate and up rows [2I,H], then down [H,I]. `config` overrides CONFIG's tiling (benchmarks)."""
    I, H = shape.intermediate, shape.hidden
    assert data.shape[1] == 3 * I * H and data.is_contiguous(), (tuple(data.shape), I, H)
    config = CONFIG if config is None else CONFIG | config
    x = x.to(data.dtype).contiguous()
    gate_up = _rows_times_x(data, slots, x, 0, 2 * I, H, 0, config)  # [n,T,2I]
    gate, up = gate_up.chunk(2, dim=-1)  # [n,T,I] each
    hidden = (act(gate) * up).contiguous()  # [n,T,I]
    return _rows_times_x(data, slots, hidden, 2 * I * H, H, I, hidden.shape[1] * I, config)  # [n,T,H]
