"""Small host<->device copies of the decode loop without a pinned allocation each.

Where it sits: the engine sends each layer's plan to the device (token rows, gate-weight columns, changed
rows) and reads the router's scores and top-k back, a few small copies per MoE layer. A copy from pageable
memory blocks the host; `tensor.pin_memory()` per copy costs a pinned allocation (36-60 us of host time each
in the H200 profiles, several per layer). Here:
  - `to_device` copies into one pinned buffer, used as two halves in turn, and from there to the device on the
    current stream. Before a half is written again, the host waits for the event recorded when it was left, so
    no copy still reading it is overwritten (a half holds hundreds of layers' copies; the wait has long passed).
  - `start_to_host` / `finish_to_host` read several device tensors back with one wait: each is copied into a
    pinned buffer of its shape and dtype on the current stream and an event is recorded after the copies; the
    finish waits for that event only (work queued after the copies runs on), and the caller gets clones (or numpy
    copies), so nothing it keeps is overwritten by a later read. Reads on different channels have their own buffers
    and events, so they can be in flight together (a layer's router scores, and a prediction queued after them);
    one read per channel is in flight at a time: a start abandons the channel's read left unfinished.
On a CPU device both are the identity (the tensors are already where they are needed).
"""
from __future__ import annotations

import numpy as np
import torch

ALIGN = 64  # bytes: every staged tensor starts at a multiple, so a uint8 view can be reinterpreted as any dtype


class Ring:
    """Where the next staged copy goes in a buffer used as two halves in turn: `place(n)` -> start byte. Moving
    to the other half records an event (`new_event()`, recorded on the stream the copies were issued on) for the
    half being left and waits for the one recorded when the other half was last left."""

    def __init__(self, nbytes: int, new_event):
        self.half = nbytes // 2
        self.new_event = new_event
        self.side = 0  # the half being written
        self.offset = 0  # next free byte in it
        self.left = [None, None]  # the event recorded when each half was last left

    def place(self, n: int) -> int:
        assert 0 < n <= self.half, "a copy larger than half the buffer is not staged"
        if self.offset + n > self.half:
            event = self.new_event()
            event.record()
            self.left[self.side] = event
            self.side ^= 1
            self.offset = 0
            if self.left[self.side] is not None:
                self.left[self.side].synchronize()
        start = self.side * self.half + self.offset
        self.offset = -(-(self.offset + n) // ALIGN) * ALIGN
        return start


class PinnedStaging:
    """The runtime's small copies both ways (module docstring); every copy is issued on the current stream, which
    the `Ring`'s events rely on."""

    def __init__(self, device: torch.device, nbytes: int = 1 << 20):
        self.device = device
        self.cuda = device.type == "cuda"
        self.ring = Ring(nbytes, torch.cuda.Event)
        self.buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True) if self.cuda else None
        self.back: dict[tuple, torch.Tensor] = {}  # (channel, position, shape, dtype) -> pinned host tensor of a read
        self.reads: dict[str, torch.cuda.Event] = {}  # channel -> recorded after its read's copies (reused)
        self.arrays: dict[int, np.ndarray] = {}  # id of a read's pinned host tensor (kept in `back`) -> its numpy view

    def to_device(self, a: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A host array or tensor -> the same values on the device (asynchronous on the current stream)."""
        t = self.stage(a)
        return t if not self.cuda else t.to(self.device, non_blocking=True)

    def stage(self, a: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A host array or tensor -> the same values in pinned memory, a copy's source on a GPU (`to_device`): issue
        the copy from it on the current stream before staging anything else, and the memory stays unchanged until
        the copy has run. On a CPU, `a` as a tensor (numpy's memory shared)."""
        t = torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a.contiguous()
        if not self.cuda:
            return t
        n = t.numel() * t.element_size()
        if n == 0 or n > self.ring.half:  # empty, or larger than the buffer's half: a pinned copy of its own
            return t.pin_memory()
        start = self.ring.place(n)
        staged = self.buf[start:start + n].view(t.dtype).view(t.shape)
        staged.copy_(t)
        return staged

    def start_to_host(self, *tensors: torch.Tensor, channel: str = "scores") -> tuple[str, list[torch.Tensor]]:
        """Queue the copies of device tensors to the host on the current stream; `finish_to_host(result)` waits
        for them. Work queued after this call does not delay the finish."""
        if not self.cuda:
            return channel, list(tensors)  # already on the host: `finish_to_host` hands them over
        out = []
        for i, t in enumerate(tensors):
            key = (channel, i, tuple(t.shape), t.dtype)
            host = self.back.get(key)
            if host is None:
                host = self.back[key] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
            out.append(host)
        event = self.reads.get(channel)
        if event is None:
            event = self.reads[channel] = torch.cuda.Event()
        event.record()
        return channel, out

    def finish_to_host(self, started: tuple[str, list[torch.Tensor]], arrays: int = 0) -> list:
        """The host copies `start_to_host` queued, once they have landed (a wait on their channel's event only): the
        first `arrays` as numpy arrays (their dtypes must be numpy's), the rest as tensors."""
        channel, tensors = started
        if not self.cuda:
            return [t.numpy() if i < arrays else t.cpu() for i, t in enumerate(tensors)]
        self.reads[channel].synchronize()
        return [self._array(h).copy() if i < arrays else h.clone() for i, h in enumerate(tensors)]

    def _array(self, host: torch.Tensor) -> np.ndarray:
        """A pinned read buffer's numpy view, made once per buffer (a copy of it costs a fraction of a clone)."""
        a = self.arrays.get(id(host))
        if a is None:
            a = self.arrays[id(host)] = host.numpy()
        return a
