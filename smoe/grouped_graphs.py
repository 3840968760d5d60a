"""Decode's batched expert products as CUDA graphs: one replay per product instead of about fifteen launches.

Where it sits: in the engine's "graphs" mode (`Runtime(grouped_experts="graphs")`) a decode layer's resident
experts run through here instead of `grouped_kernel.slot_grouped_forward` called op by op. That product was the
all-GPU floor's costliest host span: 9.6 of 29.1 ms a profiled decode step of the Qwen2-57B shape's 14 layers
(two Triton launches, a handful of torch ops, the slot indices' and gate weights' copies;
results/gpu/queue_h100_s50). Here the product of n experts over T tokens,

    sum_i gate[i] * expert_i(x)      x [T,H], gate [n,T] -> [T,H]

is captured once per (n, T, dtypes) and replayed for every layer and step. A replay reads two static inputs: the
layer's x, and one packed plan [n + n*T] float32 (`pack`: the n slot indices' int32 bits, then the gate
weights), staged in pinned memory (`PinnedStaging.stage`) and copied in with one asynchronous copy. The product's
output is cloned right after its replay, so a second product of the same n in one layer does not overwrite the
first. With `capture=False` the same function runs eagerly (on a CPU the tests run it in Triton's interpreter).
Capture time is counted in `capture_s`; a piece is captured on the first decode step that needs it.
"""
from __future__ import annotations

import numpy as np
import torch

from .checkpoint import ExpertShape
from .grouped_kernel import slot_grouped_forward
from .predict_graphs import Pieces
from .staging import PinnedStaging


def pack(slots: list[int], gate: np.ndarray) -> np.ndarray:
    """The n slot indices and the gate weights [n,T] float32 -> one plan [n + n*T] float32 whose first n elements
    hold the slots' int32 bits."""
    n = len(slots)
    plan = np.empty(n + gate.size, dtype=np.float32)
    plan[:n].view(np.int32)[:] = slots
    plan[n:] = gate.ravel()
    return plan


def product(x: torch.Tensor, plan: torch.Tensor, data: torch.Tensor, n: int, shape: ExpertShape, act,
            gate_dtype: torch.dtype) -> torch.Tensor:
    """x [T,H] and a `pack`ed plan [n + n*T] on data's device -> sum over the plan's slots of gate weight x expert
    output [T,H], the gate weights rounded to `gate_dtype` (the router's) as the engine's other paths round them."""
    T = x.shape[0]
    slots = plan[:n].view(torch.int32)  # [n]
    gate = plan[n:].view(n, T).to(gate_dtype)  # [n,T]
    y = slot_grouped_forward(x, data, slots, shape, act)  # [n,T,H]
    return (y * gate[..., None].to(y.dtype)).sum(0)


class GroupedGraphs(Pieces):
    def __init__(self, data: torch.Tensor, shape: ExpertShape, act, staging: PinnedStaging, capture: bool):
        super().__init__(capture)
        self.data, self.shape, self.act, self.staging = data, shape, act, staging

    def __call__(self, x: torch.Tensor, slots: list[int], gate: np.ndarray, gate_dtype: torch.dtype) -> torch.Tensor:
        """x [T,H], the experts' slots (their copies waited for: `SlotPool.await_slots`) and gate weights [n,T]
        float32 on the host -> [T,H], a tensor of the caller's own."""
        n, T = gate.shape
        plan = self.staging.stage(pack(slots, gate))  # [n + n*T]
        key = ("grouped", n, T, x.dtype, gate_dtype)
        piece = self.pieces.get(key)
        if piece is None:
            def fn(x, plan):
                return product(x, plan, self.data, n, self.shape, self.act, gate_dtype)

            piece = self._piece(key, fn, [x, plan.to(x.device)])
        out = piece(x, plan)  # [T,H]
        return out.clone() if self.capture else out
