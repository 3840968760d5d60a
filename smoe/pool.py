"""The device slot pool: one pool of expert slots shared by all MoE layers.

Where it sits: the engine asks the pool to evict, load (a host->device copy on the copy stream) and hand
out the weights of resident experts. On a GPU the slots are one preallocated tensor [C, 3*I*H]; each slot
has a `ready` event (its copy finished) and a `done` event (the last computation reading it finished), so
a copy into a slot waits for its previous reader and a computation waits for its copy, stream to stream,
with no device-wide synchronize. With `link` (`hardware.EmulatedLink`) every copy takes as long as it would
over a slower PCIe link. On a CPU-only machine the slots are logical: residency, loads and bytes
are accounted exactly as on a GPU, and a resident expert is computed straight from the host store.
"""
from __future__ import annotations

import numpy as np
import torch

from .plan import ExpertKey
from .staging import PinnedStaging
from .store import HostStore


class SlotPool:
    def __init__(self, capacity: int, store: HostStore, device: torch.device, link=None):
        assert capacity >= 1
        self.capacity = capacity
        self.store = store
        self.device = device
        self.cuda = device.type == "cuda"
        self.link = link
        self.slot_of: dict[ExpertKey, int] = {}
        self.by_layer: dict[int, set[int]] = {}
        self.masks: dict[int, np.ndarray] = {}  # layer -> [E] bool: by_layer as an array (compiled decisions read it)
        self.prefetched: set[ExpertKey] = set()
        self._free = list(range(capacity - 1, -1, -1))  # pop() hands out slot 0 first
        if self.cuda:
            self.data = torch.empty(capacity, store.shape.numel, dtype=store.dtype, device=device)
            self.copy_stream = torch.cuda.Stream(device=device)
            self.compute_stream = torch.cuda.current_stream(device)  # where the model runs (asked once: slow)
            self.ready = [torch.cuda.Event() for _ in range(capacity)]
            self.done = [torch.cuda.Event() for _ in range(capacity)]
        self._timed: list[tuple] = []  # (queued, start, end) events of copies not yet read
        self._waited: list[tuple] = []  # (before, after) events of the compute stream's waits for copies not yet read
        self._fresh: set[int] = set()  # slots whose last copy the compute stream has not waited for yet
        self.staging = PinnedStaging(device)  # the small copies of a layer (slot indices, the engine's plan)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def layer_mask(self, layer: int) -> np.ndarray:
        """[E] bool: which experts of `layer` are resident (the pool's own array, kept up to date: read-only)."""
        mask = self.masks.get(layer)
        if mask is None:
            mask = self.masks[layer] = np.zeros(self.store.num_experts, dtype=bool)
        return mask

    def __contains__(self, key: ExpertKey) -> bool:
        return key in self.slot_of

    def evict(self, key: ExpertKey) -> None:
        slot = self.slot_of.pop(key)
        self.by_layer[key[0]].discard(key[1])
        self.masks[key[0]][key[1]] = False
        self.prefetched.discard(key)
        self._free.append(slot)

    def load(self, key: ExpertKey, prefetch: bool = False) -> int:
        """Copy one expert into a free slot (asynchronously on a GPU); returns the bytes moved."""
        assert key not in self.slot_of, key
        slot = self._free.pop()
        self.slot_of[key] = slot
        self.by_layer.setdefault(key[0], set()).add(key[1])
        self.layer_mask(key[0])[key[1]] = True
        if prefetch:
            self.prefetched.add(key)
        if self.cuda:
            queued, start, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            with torch.cuda.stream(self.copy_stream):
                queued.record(self.copy_stream)
                self.copy_stream.wait_event(self.done[slot])  # the previous occupant's last reader
                start.record(self.copy_stream)
                self.data[slot].copy_(self.store.expert(*key), non_blocking=True)
                if self.link is not None:
                    self.link.after_copy()
                end.record(self.copy_stream)
                self.ready[slot].record(self.copy_stream)
            self._timed.append((queued, start, end))
            self._fresh.add(slot)
        return self.store.expert_bytes

    def copy_timings(self, wait: bool = False) -> tuple[list[float], float, float]:
        """What the streams' events tell of the copies since the last call, for those finished (never waits, unless
        `wait`: then for all issued so far): each copy's duration with its emulated hold, oldest first (they also
        tune the emulated link); the seconds the copy stream waited before them for their slots' last readers (a
        victim still being read); and the seconds the compute stream waited for copies (`_await`): the device's
        time in the step that the link, not the compute, set."""
        if wait:
            for pending in (self._timed, self._waited):
                if pending:
                    pending[-1][-1].synchronize()
        copies, victim_wait = [], 0.0
        while self._timed and self._timed[0][2].query():
            queued, start, end = self._timed.pop(0)
            copies.append(start.elapsed_time(end) / 1e3)
            victim_wait += queued.elapsed_time(start) / 1e3
        compute_wait = 0.0
        while self._waited and self._waited[0][1].query():
            before, after = self._waited.pop(0)
            compute_wait += before.elapsed_time(after) / 1e3
        if self.link is not None and copies:
            self.link.observe(copies, in_flight=len(self._timed))
        return copies, victim_wait, compute_wait

    def weights(self, key: ExpertKey) -> torch.Tensor:
        """The resident expert's weights [3*I*H], safe to read on the current (compute) stream."""
        if not self.cuda:
            return self.store.expert(*key)
        slot = self.slot_of[key]
        self._await([slot])
        return self.data[slot]

    def gather(self, keys: list[ExpertKey]) -> torch.Tensor:
        """The weights of resident experts stacked [n, 3*I*H] (one device gather), safe on the compute stream."""
        if not self.cuda:
            return torch.stack([self.store.expert(*k) for k in keys])
        return self.data.index_select(0, self.slot_index(keys))

    def slot_index(self, keys: list[ExpertKey]) -> torch.Tensor:
        """The slots of resident experts [n] int64 on the device (rows of `data`), safe to read on the compute
        stream (GPU only)."""
        return self.staging.to_device(np.asarray(self.await_slots(keys), dtype=np.int64))  # [n]

    def await_slots(self, keys: list[ExpertKey]) -> list[int]:
        """The slots of resident experts, with the compute stream ordered after their copies (GPU only)."""
        slots = [self.slot_of[k] for k in keys]
        self._await(slots)
        return slots

    def _await(self, slots: list[int]) -> None:
        """Order the compute stream after the copies into `slots` not waited for yet, timing the wait as one (events
        before and after it, none while a graph is being captured)."""
        fresh = [slot for slot in dict.fromkeys(slots) if slot in self._fresh]  # each once, in order
        if not fresh:  # once waited for, later work on the compute stream is ordered after the copy
            return
        timed = not torch.cuda.is_current_stream_capturing()
        if timed:
            before, after = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            before.record(self.compute_stream)
        for slot in fresh:
            self.compute_stream.wait_event(self.ready[slot])
        if timed:
            after.record(self.compute_stream)
            self._waited.append((before, after))
        self._fresh.difference_update(fresh)

    def release(self, key: ExpertKey) -> None:
        """Mark the end of the compute stream's reads of this expert's slot."""
        self.release_all([key])

    def mark_used(self, keys) -> None:
        """These experts have been used since they were prefetched (no longer `prefetched`)."""
        self.prefetched.difference_update(keys)

    def release_all(self, keys: list[ExpertKey]) -> None:
        """Mark the end of the compute stream's reads of these experts' slots (one event for all)."""
        if self.cuda:
            done = torch.cuda.Event()
            done.record(self.compute_stream)
            for k in keys:
                self.done[self.slot_of[k]] = done
