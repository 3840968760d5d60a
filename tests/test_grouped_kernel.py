"""`grouped_kernel.slot_grouped_forward` (the GPU's grouped decode path, a Triton kernel that reads each expert's
weights in place from its slot) against `store.grouped_forward` on the same experts gathered, in Triton's
interpreter on the CPU. The interpreter is chosen when Triton is imported, so the check runs in a fresh process.
The interpreter computes bfloat16 products wrongly (triton-lang/triton#11584), so this runs in float32 and
float16; the H200 benchmark (`benchmarks/grouped_kernel.py`) checks bfloat16 on the device."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]

CHECK = r"""
import json, sys
import torch
from smoe.checkpoint import ExpertShape
from smoe.grouped_kernel import CONFIG, slot_grouped_forward
from smoe.store import grouped_forward

torch.manual_seed(0)
act = torch.nn.functional.silu
out = []
# hidden/intermediate below, at and across the kernel's blocks; batches 1-3 and one past tl.dot's 16-row tile
BK, BR = CONFIG["block_k"], CONFIG["block_r"]
for H, I, T, slots in [(48, 40, 1, [4, 0, 2]), (BK, BR, 3, [1, 5, 3, 0, 2]),
                       (BK + 2, 2 * BR + 6, 2, [5, 1]), (72, 24, 17, [3])]:
    shape = ExpertShape(hidden=H, intermediate=I)
    data = torch.randn(6, shape.numel) * 0.2  # 6 slots
    x = torch.randn(T, H)
    index = torch.tensor(slots)
    for dtype in (torch.float32, torch.float16):
        got = slot_grouped_forward(x.to(dtype), data.to(dtype), index, shape, act)  # [n,T,H]
        want = grouped_forward(x.to(dtype).float(), data.to(dtype)[index].float(), shape, act)
        out.append({"H": H, "I": I, "T": T, "n": len(slots), "dtype": str(dtype), "shape": list(got.shape),
                    "err": (got.float() - want).abs().max().item(), "scale": want.abs().max().item()})
print(json.dumps(out))
"""


def test_slot_kernel_equals_the_gathered_product():
    env = os.environ | {"TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(cases) == 8
    for c in cases:
        assert c["shape"] == [c["n"], c["T"], c["H"]], c
        # float32: the same sums in another order; float16: the hidden activations rounded to half as well
        tol = 1e-5 if c["dtype"] == "torch.float32" else 4e-3
        assert c["err"] <= tol * c["scale"], c


GRAPHS = r"""
import json
import numpy as np
import torch
from smoe.checkpoint import ExpertShape
from smoe.grouped_graphs import GroupedGraphs
from smoe.staging import PinnedStaging
from smoe.store import grouped_forward

torch.manual_seed(0)
act = torch.nn.functional.silu
shape = ExpertShape(hidden=40, intermediate=24)
data = torch.randn(7, shape.numel) * 0.2  # 7 slots
products = GroupedGraphs(data, shape, act, PinnedStaging(torch.device("cpu")), capture=False)
out = []
for T, slots in [(1, [5, 0, 3]), (3, [6, 2, 4, 1]), (3, [2])]:
    x = torch.randn(T, shape.hidden)
    gate = np.random.default_rng(T).random((len(slots), T), dtype=np.float32)  # [n,T]
    got = products(x, slots, gate, torch.float32)  # [T,H]
    y = grouped_forward(x, data[torch.tensor(slots)], shape, act)  # [n,T,H]
    want = (y * torch.from_numpy(gate)[..., None]).sum(0)
    out.append({"T": T, "n": len(slots), "shape": list(got.shape), "err": (got - want).abs().max().item(),
                "scale": want.abs().max().item()})
print(json.dumps(out))
"""


def test_grouped_graphs_product_reads_the_packed_slots_and_gate_weights():
    """The "graphs" mode's product (`grouped_graphs`, run eagerly: the CUDA graph captures this same function) sends
    the slot indices and gate weights [n,T] in one packed plan; it must weight expert i's output by row i of the gate
    weights and read the slots in the order given."""
    env = os.environ | {"TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", GRAPHS], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(c["T"], c["n"]) for c in cases] == [(1, 3), (3, 4), (3, 1)]
    for c in cases:
        assert c["shape"] == [c["T"], 40], c
        assert c["err"] <= 1e-5 * c["scale"], c
