"""Measured rates of the machine a run is on (what the bound of a decode step is computed from).

Where it sits: benchmarks call it before their runs (`benchmarks/core_gpu.py`, `benchmarks/paper_shape.py`);
`measure_machine` is the DAG's `machine_profile` rule (`python -m smoe measure-machine`), whose output the cost
model reads as a measured `MachineProfile` (`smoe.costmodel.measured_profile`).
"""
from __future__ import annotations

import os
import platform
import statistics
import time

import torch


def gpu_model(name: str) -> str:
    """A CUDA device name -> its model in lower case, as result tables name the GPU a row was timed on: the first
    word holding a digit ('NVIDIA H100 80GB HBM3' -> 'h100', 'NVIDIA GeForce RTX 4090' -> '4090'), else the whole
    name."""
    return next((w for w in name.lower().split() if any(c.isdigit() for c in w)), name.lower().replace(" ", "-"))


def _copies_per_second(dst: torch.Tensor, src: torch.Tensor, reps: int) -> float:
    """`dst.copy_(src)` per second, after a warm-up copy; waits for the GPU where either side is on one."""
    sync = torch.cuda.synchronize if "cuda" in (dst.device.type, src.device.type) else (lambda: None)
    dst.copy_(src, non_blocking=True)  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src, non_blocking=True)
    sync()
    return reps / (time.perf_counter() - t0)


def h2d_rate(nbytes: int, pinned: bool = True, reps: int = 50) -> float:
    """Host -> GPU copy rate in bytes/s of one buffer of `nbytes`, from pinned or pageable host memory."""
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
    return nbytes * _copies_per_second(torch.empty(nbytes, dtype=torch.uint8, device="cuda"), src, reps)


def device_copy_rate(nbytes: int, device: str, reps: int = 20) -> float:
    """Memory rate in bytes/s of a device-to-device copy of `nbytes` (read + write counted), on `device`."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    return 2 * nbytes * _copies_per_second(torch.empty_like(src), src, reps)


def _median_seconds(fn, n: int, threads: int, reps: int) -> float:
    """fn(i) on `threads` intra-op threads, i cycling over n items (each read from memory, not cache): the median
    seconds of `reps` calls after one warm-up call; the thread count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fn(0)  # warm-up
        times = []
        for i in range(reps):
            t0 = time.perf_counter()
            fn((i + 1) % n)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return statistics.median(times)


def cpu_expert_rate(hidden: int, intermediate: int, threads: int, reps: int = 20, tokens: int = 1,
                    pool_bytes: int = 128 << 20) -> float:
    """Bytes/s at which the CPU streams one bfloat16 SwiGLU expert's weights for `tokens` tokens (the CPU-expert
    path's own `expert_forward`, on `threads` threads): the expert's bytes over the median time per call, cycling
    over `pool_bytes` of experts (by default more than a last-level cache)."""
    from .checkpoint import ExpertShape
    from .store import expert_forward

    shape = ExpertShape(hidden=hidden, intermediate=intermediate)
    n = max(2, -(-pool_bytes // (shape.numel * 2)))  # experts cycled through
    w = torch.empty(n, shape.numel, dtype=torch.bfloat16).normal_(std=0.02)  # [n, 3*I*H]
    x = torch.randn(tokens, hidden, dtype=torch.bfloat16)  # [tokens,H]
    seconds = _median_seconds(lambda i: expert_forward(x, w[i], shape, torch.nn.functional.silu), n, threads, reps)
    return shape.numel * 2 / seconds


def cpu_read_rate(nbytes: int, threads: int, reps: int = 20, pool_bytes: int = 128 << 20) -> float:
    """Bytes/s at which the CPU reads a buffer of `nbytes` on `threads` threads (a `max` over it as int16, which
    only reads): the ceiling of an expert of that size at decode batch sizes, cycling as `cpu_expert_rate` does."""
    n = max(2, -(-pool_bytes // nbytes))
    bufs = torch.zeros(n, nbytes // 2, dtype=torch.int16)  # [n, nbytes/2], every page written
    return nbytes / _median_seconds(lambda i: bufs[i].max(), n, threads, reps)


def measure_machine(device: str, name: str, hidden: int = 2048, intermediate: int = 1408,
                    threads: int | None = None) -> dict:
    """The rates the cost model needs, measured on this machine (`name` is the profile it becomes):
    `pcie_gbps` pinned host->device copies of one expert (None without a GPU: nothing crosses a link),
    `gpu_mem_gbps` the device's memory rate (a 1 GiB copy; on a CPU-only machine the host's, a 128 MiB copy, so
    the job fits a small cluster slot), `cpu_mem_gbps`
    the rate of one CPU expert at batch 1 with the runtime's CPU-expert threads. The expert defaults to the
    paper's S1 (deepseek-moe-16b: hidden 2048, intermediate 1408, bfloat16)."""
    from .checkpoint import ExpertShape
    from .runtime import default_cpu_threads

    if device not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}; accepted: cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch sees no GPU")
    threads = threads or default_cpu_threads()
    expert_bytes = ExpertShape(hidden=hidden, intermediate=intermediate).numel * 2  # bfloat16
    return {
        "name": name,
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "pcie_gbps": h2d_rate(expert_bytes) / 1e9 if device == "cuda" else None,
        "gpu_mem_gbps": (device_copy_rate(1 << 30, device) if device == "cuda" else
                         device_copy_rate(128 << 20, device, reps=5)) / 1e9,
        "cpu_mem_gbps": cpu_expert_rate(hidden, intermediate, threads) / 1e9,
        "expert": {"hidden": hidden, "intermediate": intermediate, "dtype": "bfloat16", "bytes": expert_bytes},
        "cpu_threads": threads,
        "host_cores": os.cpu_count(),
        "torch": torch.__version__,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


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
    block. Emulated rows are labelled so in every table (`link_gbps`).

    The spin counts SM clock cycles, and the SM clock under a decode's load is not the clock it was calibrated
    at (a run once delivered 28 GB/s through a 24 GB/s link), nor do real copies keep the rate measured at the
    start. So the pool feeds back each copy's measured time (copy plus hold, from events on the copy stream,
    read when they have finished: `observe`) and `HoldTuner` moves the hold until copies take `bytes / rate`."""

    def __init__(self, gbps: float, nbytes: int):
        native = h2d_rate(nbytes)
        if gbps * 1e9 >= native:
            raise ValueError(f"an emulated link of {gbps} GB/s is not slower than this machine's own "
                             f"{native / 1e9:.1f} GB/s; give a lower rate")
        cycles_per_s = sleep_cycles_per_second()
        self.tuner = HoldTuner(target_s=nbytes / (gbps * 1e9), cycles_per_s=cycles_per_s,
                               hold_cycles=round(hold_seconds(nbytes, gbps * 1e9, native) * cycles_per_s))

    @property
    def hold_cycles(self) -> int:
        return self.tuner.hold_cycles

    def after_copy(self) -> None:
        """Called on the copy stream right after one copy of the `nbytes` given."""
        torch.cuda._sleep(self.tuner.hold_cycles)

    def observe(self, seconds: list[float], in_flight: int = 0) -> None:
        """Measured times of finished copies (each copy and its hold), oldest first; `in_flight`: copies issued
        after them whose times are not read yet."""
        self.tuner.observe(seconds, in_flight)


class HoldTuner:
    """Moves a spin's length (clock cycles) until each copy plus its spin takes `target_s` on average.

    After every `every` measured copies, the hold changes by `gain` x (target - their mean time), turned into
    cycles at the calibrated `cycles_per_s`. If the clock actually runs at r x the calibration, the error shrinks
    by (1 - gain / r) per round: converging for any r above gain / 2, with no overshoot while r >= gain. Copies
    issued before a change (those still in flight then, `in_flight`) are not counted after it: measured against the
    new hold they would correct the same error twice, which with a few copies in flight makes the hold oscillate
    and grow. A copy slower than the target on its own leaves a hold of 0 (the link cannot be made faster)."""

    def __init__(self, target_s: float, cycles_per_s: float, hold_cycles: int, every: int = 4, gain: float = 0.5):
        assert target_s > 0 and cycles_per_s > 0 and hold_cycles >= 0 and every >= 1 and 0 < gain <= 1
        self.target_s, self.cycles_per_s, self.every, self.gain = target_s, cycles_per_s, every, gain
        self.hold_cycles = hold_cycles
        self._pending: list[float] = []
        self._stale = 0  # copies still to come that were issued before the last change
        self.rounds = 0  # changes made

    def observe(self, seconds: list[float], in_flight: int = 0) -> None:
        """Measured times of finished copies, oldest first; `in_flight`: copies issued after them, not yet read."""
        for i, s in enumerate(seconds):
            if self._stale:
                self._stale -= 1
                continue
            self._pending.append(s)
            if len(self._pending) == self.every:
                error_s = self.target_s - sum(self._pending) / self.every  # > 0: copies ran faster than the link
                self.hold_cycles = max(0, self.hold_cycles + round(self.gain * error_s * self.cycles_per_s))
                self.rounds += 1
                self._pending = []
                self._stale = len(seconds) - i - 1 + in_flight


def hold_seconds(nbytes: int, link_Bps: float, native_Bps: float) -> float:
    """How long a copy of `nbytes` must be held after it ran at `native_Bps` to have taken `nbytes / link_Bps`."""
    return max(0.0, nbytes / link_Bps - nbytes / native_Bps)
