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


def sleep_cycles_per_second(reps: int = 3) -> float:
    """Clock cycles per second that `torch.cuda._sleep` spins (one kernel reading the SM clock)."""
    cycles = 20_000_000
    torch.cuda._sleep(cycles)  # warm-up
    best = float("inf")
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return cycles / best


class EmulatedLink:
    """A host->GPU link slower than the machine's own, for one copy stream: each copy runs at the real rate and
    is followed, on the same stream, by a spinning kernel that holds the stream until `bytes / rate` has
    passed. Copies and everything ordered after them on the stream (the slot's ready event, later copies) see
    the emulated link's timing, while compute streams run on; the spinner takes one SM's worth of one thread
    block. Emulated rows are labelled so in every table (`link_gbps`)."""

    def __init__(self, gbps: float, nbytes: int):
        native = h2d_rate(nbytes)
        if gbps * 1e9 >= native:
            raise ValueError(f"an emulated link of {gbps} GB/s is not slower than this machine's own "
                             f"{native / 1e9:.1f} GB/s; give a lower rate")
        self.hold_cycles = round(hold_seconds(nbytes, gbps * 1e9, native) * sleep_cycles_per_second())

    def after_copy(self) -> None:
        """Called on the copy stream right after one copy of the `nbytes` given."""
        torch.cuda._sleep(self.hold_cycles)


def hold_seconds(nbytes: int, link_Bps: float, native_Bps: float) -> float:
    """How long a copy of `nbytes` must be held after it ran at `native_Bps` to have taken `nbytes / link_Bps`."""
    return max(0.0, nbytes / link_Bps - nbytes / native_Bps)
