"""Measured rates of the machine a run is on (what the bound of a decode step is computed from).

Where it sits: benchmarks call it before their runs (`benchmarks/core_gpu.py`, `benchmarks/paper_shape.py`).
"""
from __future__ import annotations

import time

import torch


def h2d_rate(nbytes: int, pinned: bool = True, reps: int = 50) -> float:
    """Host -> GPU copy rate in bytes/s of one buffer of `nbytes`, from pinned or pageable host memory."""
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst.copy_(src, non_blocking=True)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    return nbytes * reps / (time.perf_counter() - t0)
