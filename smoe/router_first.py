"""Qwen2-MoE's block with its router run before its shared expert, so the device computes the shared expert while
the host plans the routed experts.

Hugging Face's Qwen2-MoE block (transformers 5.x) runs its gated shared expert, then its router, then the routed
experts. The engine needs the router's scores on the host before it can plan the routed experts, and reading them
waits for everything queued before them: the shared expert included, so the device sits idle while the host plans
(on the Qwen2-57B shape the shared expert reads 440 MB of weights per layer, about 0.13 ms of the H200's time).
Here the router runs first and its scores start their copy to the host (`OffloadedExperts.stage`) before the shared
expert is queued; the host then waits for the scores only, and plans while the device computes the shared expert.
The block computes the same operations on the same inputs and adds the two outputs in HF's order, so its logits
equal those of HF's order bit for bit (`tests/test_exactness.py`). `Runtime(..., router_first=False)` keeps HF's
order.
"""
from __future__ import annotations

import torch
from torch import nn


def applies(block: nn.Module) -> bool:
    """Blocks this reordering is written for: HF's Qwen2-MoE block (a gated shared expert run before the router)."""
    return type(block).__name__ == "Qwen2MoeSparseMoeBlock" and hasattr(block, "shared_expert_gate")


def install(block: nn.Module, layer: int, graphs=None) -> None:
    """Give `block` (one that `applies`; decoder layer `layer`) the router-first forward; `block.experts` must be the
    engine's `OffloadedExperts` (it takes the staged scores). `graphs`: a `SkeletonGraphs` with `block` on, whose
    piece then runs the mix of the shared and routed outputs at decode."""

    def mix(x, shared, routed):  # x [T,H], the shared expert's output [T,H], the routed experts' [T,H] -> [T,H]
        return routed + torch.sigmoid(block.shared_expert_gate(x)) * shared

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:  # [B,S,H] -> [B,S,H]
        batch, seq, hidden = hidden_states.shape
        x = hidden_states.view(-1, hidden)  # [T,H]
        _, weights, index = block.gate(x)  # [T,K] each; the gate's hook hands the logits to the experts module
        block.experts.stage(index, weights)  # the scores' copy to the host is queued before the shared expert
        shared = block.shared_expert(x)  # [T,H]: the device runs it while the host plans
        routed = block.experts(x, index, weights)  # [T,H]
        out = mix(x, shared, routed) if graphs is None else graphs.run(layer, "mix", mix, [x, shared, routed])
        return out.reshape(batch, seq, hidden)

    block.forward = forward
