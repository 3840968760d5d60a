"""Constants and helpers shared by the test modules (fixtures live in conftest.py)."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smoe.tiny import TINY

FAMILIES = sorted(TINY)
PROMPTS = ["The quick brown fox jumps over the lazy dog", "Hi there"]  # different lengths: left padding
NEW_TOKENS = 20
PAD_ID = 256  # the byte tokenizer's <pad>

# Every metric a run reports (smoe.metrics.Metrics.summary), and the per-phase counters.
METRIC_KEYS = {
    "ttft_s", "tpot_s", "tpot_p50_s", "tpot_p90_s", "queue_s", "hit_rate", "loads", "bytes_h2d", "cpu_experts", "cpu_time_s",
    "substitutions", "skips", "prefetches", "prefetch_used", "policy_time_s", "check_time_s", "prefetch_time_s",
    "predict_time_s", "copy_wait_s", "victim_wait_s", "peak_device_bytes", "preload_loads", "decode_steps", "prefill",
    "decode",
}
PHASE_KEYS = {"uses", "hits", "loads", "bytes_h2d", "cpu_experts", "cpu_time_s", "cpu_host_s", "substitutions", "skips",
              "prefetches", "prefetch_used", "policy_time_s", "check_time_s", "prefetch_time_s",
              "predict_time_s", "copy_wait_s", "victim_wait_s"}


@dataclass
class Reference:
    ids: torch.Tensor  # [B,S] left-padded prompt ids
    mask: torch.Tensor  # [B,S]
    tokens: list[list[int]]  # [B,N] greedy tokens of the HF model
    logits: list[torch.Tensor]  # N tensors [B,V], one per forward pass


def collect_logits():
    """(logits, steps, callback) for Runtime.generate's on_logits: one [B,V] tensor per forward pass."""
    out: list[torch.Tensor] = []
    steps: list[int] = []

    def cb(step: int, logits: torch.Tensor) -> None:
        steps.append(step)
        out.append(logits.detach().float().cpu().clone())

    return out, steps, cb


class FakePool:
    """The slot pool's bookkeeping only (what CacheView reads), for planning tests without a model."""

    def __init__(self, capacity, resident=(), num_experts=256):
        self.capacity = capacity
        self.num_experts = num_experts  # at least any test's E: the compiled decisions read masks up to E
        self.slot_of, self.by_layer, self.prefetched = {}, {}, set()
        for key in resident:
            self.add(key)

    @property
    def free_slots(self):
        return self.capacity - len(self.slot_of)

    def layer_mask(self, layer):
        """[num_experts] bool: the layer's resident experts, built from by_layer (which tests edit directly)."""
        mask = np.zeros(self.num_experts, dtype=bool)
        mask[list(self.by_layer.get(layer, ()))] = True
        return mask

    def add(self, key, prefetched=False):
        self.slot_of[key] = len(self.slot_of)
        self.by_layer.setdefault(key[0], set()).add(key[1])
        if prefetched:
            self.prefetched.add(key)

    def apply(self, plan, layer, ex):
        """What the engine does to residency when it executes a checked plan."""
        for key in plan.evict:
            del self.slot_of[key]
            self.by_layer[key[0]].discard(key[1])
            self.prefetched.discard(key)
        for e in ex.loads:
            self.add((layer, e))


def record_replay_traces(root, workload: str = "exam") -> Path:
    """A decode trace of a 28-layer tiny smolmoe (64 experts, top-8) with its predictions, saved where
    `benchmarks/paper_shape.py --traces` looks: root/traces/{workload}/b1.pt. Returns root/traces."""
    from pathlib import Path

    from smoe.replay import save_trace
    from smoe.runtime import Runtime
    from smoe.tiny import make_tiny

    root = Path(root)
    ckpt = make_tiny("smolmoe", root / "sm", num_hidden_layers=28, num_experts=64, num_experts_per_tok=8,
                     moe_intermediate_size=4, shared_expert_intermediate_size=16)
    rt = Runtime(ckpt, "lru", cache_experts=28 * 64, batch=1, trace=True, trace_predictions=True)
    rt.generate(["the sea"], max_new_tokens=3)
    save_trace(root / "traces" / workload / "b1.pt", str(ckpt), "lru", rt)
    rt.close()
    return root / "traces"


def stand_in_cuda_graphs(monkeypatch) -> None:
    """Replace the CUDA stream and graph API that `predict_graphs.Piece` uses with no-ops, for captured pieces on a
    machine without a GPU: a capture runs the function once, and a replay changes nothing (a test that needs a replay
    to compute gives a piece's graph a `replay` of its own)."""

    class Graph:
        def capture_begin(self, **kwargs):
            pass

        def capture_end(self):
            pass

        def replay(self):
            pass

    class Stream:
        def wait_stream(self, other):
            pass

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: nullcontext())
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
