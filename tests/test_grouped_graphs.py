"""`grouped_graphs.GroupedGraphs`' bookkeeping with capture on, on the CPU: the CUDA graph API is stood in for, and
the slot kernel's product by the same product of the slots gathered (the kernel itself: test_grouped_kernel.py; the
graphs on the device: benchmarks/grouped_graphs.py)."""
from __future__ import annotations

import numpy as np
import torch

import smoe.grouped_graphs as gg
from smoe.checkpoint import ExpertShape
from smoe.staging import PinnedStaging
from smoe.store import grouped_forward
from smoe_test_support import stand_in_cuda_graphs


def test_captured_products_copy_each_plan_in_and_hand_out_their_own_output(monkeypatch):
    """A stand-in replay recomputes the captured function from its static inputs into its static output, as a graph
    does. One piece serves every call of the same (experts, tokens); each call's plan and x reach its static inputs,
    and a caller's result is not overwritten by the next replay."""
    stand_in_cuda_graphs(monkeypatch)
    # the slot kernel's product from the slots gathered
    monkeypatch.setattr(gg, "slot_grouped_forward",
                        lambda x, data, slots, shape, act: grouped_forward(x, data[slots.long()], shape, act))
    torch.manual_seed(0)
    act = torch.nn.functional.silu
    shape = ExpertShape(hidden=16, intermediate=8)
    data = torch.randn(5, shape.numel) * 0.3  # 5 slots
    products = gg.GroupedGraphs(data, shape, act, PinnedStaging(torch.device("cpu")), capture=True)
    make = products._piece

    def made(*args):  # a replay recomputes the captured function from the static inputs into the static output
        piece = make(*args)
        piece.graph.replay = lambda: piece.outputs.copy_(piece.fn(*piece.inputs))
        return piece

    products._piece = made
    rng = np.random.default_rng(0)
    calls = [(torch.randn(2, 16), [3, 0], rng.random((2, 2), dtype=np.float32)),
             (torch.randn(2, 16), [1, 4], rng.random((2, 2), dtype=np.float32))]
    got = []
    for x, slots, gate in calls:
        got.append(products(x, slots, gate, torch.float32))
    assert list(products.pieces) == [("grouped", 2, 2, torch.float32, torch.float32)]
    piece = products.pieces[("grouped", 2, 2, torch.float32, torch.float32)]
    for (x, slots, gate), out in zip(calls, got):
        want = (grouped_forward(x, data[slots], shape, act) * torch.from_numpy(gate)[..., None]).sum(0)
        torch.testing.assert_close(out, want)
    assert got[0].data_ptr() != piece.outputs.data_ptr()
