"""The offloading runtime: one object that loads a checkpoint under a budget and generates with a policy.

Where it sits: the entry point of the library (the CLI, benchmarks and the lm-eval model use it).
Loading order, so that user mistakes fail before anything large is allocated:
  checkpoint + config -> policy -> skeleton on meta -> memory plan (budget check) -> policy.setup
  -> skeleton onto the device -> routed experts into the host store -> slot pool -> preload.

    rt = Runtime("path/to/ckpt", "lru", device="cuda", budget_gb=12, batch=1)
    result = rt.generate(["The capital of Italy is"], max_new_tokens=32)
    result.tokens, result.metrics["tpot_s"], result.metrics["hit_rate"]
"""
from __future__ import annotations

import gc
import logging
from contextlib import contextmanager
import os
import platform
from dataclasses import dataclass

import torch
import transformers
from transformers import AutoTokenizer, StaticCache
from transformers.activations import ACT2FN

from . import grouped_kernel, provenance
from . import router_first as router_order
from .budget import kv_bytes_per_token, plan_memory
from .checkpoint import Checkpoint
from .engine import Engine, OffloadedExperts
from .errors import BudgetError, CheckpointError, OptionError, PromptError, SmoeError
from .generate import greedy_decode
from .hardware import EmulatedLink
from .metrics import Metrics
from .loader import expert_shape, load_skeleton, moe_blocks, skeleton_on_meta
from .plan import ModelInfo
from .policy import ExpertPolicy, make_policy
from .pool import SlotPool
from .predict import NextLayerPredictor
from .skeleton_graphs import SkeletonGraphs
from .store import HostStore

log = logging.getLogger(__name__)


@dataclass
class Result:
    tokens: list[list[int]]  # per sequence, the generated ids (prompt excluded)
    metrics: dict


KV_CACHES = ("dynamic", "static")  # the KV cache grows each step (transformers' DynamicCache), or is one buffer per layer
# decode's resident experts: one by one; gathered and batched; from their slots; that captured as CUDA graphs
GROUPED = ("off", "gather", "slots", "graphs")


def default_grouped(device: torch.device) -> str:
    """How decode computes a layer's resident experts by default: on a GPU in one batched product, read in place
    from the slots by `grouped_kernel` where Triton is installed and replayed as a CUDA graph per (experts, tokens)
    (`grouped_graphs`; else gathered out of the slots first, which moves each expert's bytes twice more); on a CPU
    one by one, in HF's order. On an H100 (Qwen2-57B shape, 14 layers, exam, batch 1, three rounds side by side) the
    graphs took the all-GPU step from 10.2-12.0 ms to 9.1 and SMoE's from 15.8-16.1 to 13.8, with the same tokens
    (results/gpu/grouped_graphs_h100_s51)."""
    if device.type != "cuda":
        return "off"
    return "graphs" if grouped_kernel.available(device) else "gather"


def default_kv_cache(device: torch.device) -> str:
    """The KV cache by default: on a GPU one static buffer per layer, so a decode layer's whole attention (and the
    predictor's) is one CUDA graph. On the H200 (Qwen2-57B shape, 48 GB, exam, batch 1, 2 rounds ABBA) the all-GPU
    step took 28-39 ms against 46-76 over the growing cache, and SMoE's 67-70 against 89-97
    (docs/h200-campaigns.md, fourteenth campaign). On a CPU the cache grows each step, as before: the pieces run
    eagerly there, with no graphs to gain."""
    return "static" if device.type == "cuda" else "dynamic"


def default_cpu_threads() -> int:
    """Threads of the CPU-expert worker: half the logical cores (about the physical ones, where two hyperthreads
    share a core), so the driver thread, whose host work paces a decode step, is not starved. On the H200 host (16
    logical cores) SMoE decoded at 122 ms per token with 8 threads and 206 ms with 15, HybriMoE 187 and 185 ms, and
    a CPU expert step took 43 against 38 ms (docs/h200-campaigns.md, fifth campaign); on another (16 cores, one thread
    each; Qwen2-57B shape, 48 GB, batch 3, 2 rounds) SMoE took 80/92 ms with 8, 83/92 with 12 and 88/104 with 15,
    HybriMoE 280-285 with each (twenty-ninth campaign)."""
    return max(1, (os.cpu_count() or 2) // 2)


class Runtime:
    def __init__(
        self,
        model_dir,
        policy: str | ExpertPolicy,
        *,
        device: str = "cpu",
        budget_gb: float | None = None,
        cache_experts: int | None = None,
        batch: int = 1,
        kv_tokens: int = 4096,
        cpu_threads: int | None = None,
        trace: bool = False,
        trace_predictions: bool = False,  # also record the predictor's view of later layers (replay sources)
        policy_params: dict | None = None,
        host_store: HostStore | None = None,
        link_gbps: float | None = None,  # emulate a slower host->GPU link (GB/s); GPU runs only
        grouped_experts: str | None = None,  # decode's resident experts batched: GROUPED (default: `default_grouped`)
        predictor_graphs: bool | None = None,  # decode predictions as CUDA graphs (default: on a GPU; on a CPU,
        # True runs the same fixed-shape pieces eagerly)
        skeleton_graphs: bool | None = None,  # decode attention of known layer kinds as CUDA graphs (same defaults)
        block_graphs: bool | None = None,  # and the rest of those layers but the routed experts (default: with
        # the skeleton graphs; needs them)
        router_first: bool = True,  # Qwen2-MoE blocks run their router before their shared expert (`router_first`)
        kv_cache: str | None = None,  # KV_CACHES: "static" keeps one buffer per layer (reused by the generate calls
        # it fits), so a decode layer's whole attention (and the predictor's) is one fixed-shape piece, a graph on a
        # GPU (default: `default_kv_cache`)
    ):
        if kv_cache is not None and kv_cache not in KV_CACHES:
            raise OptionError(f"kv_cache={kv_cache!r}; accepted: {', '.join(KV_CACHES)}")
        self.kv_tokens = kv_tokens  # the KV positions the memory plan reserves, over the batch
        self.device = torch.device(device)
        self.kv_cache = default_kv_cache(self.device) if kv_cache is None else kv_cache
        skeleton_on = self.device.type == "cuda" if skeleton_graphs is None else skeleton_graphs
        if block_graphs and not skeleton_on:
            raise OptionError("block_graphs=True runs inside the skeleton graphs' decode call; skeleton_graphs is off "
                              "(turn it on, or leave block_graphs out)")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BudgetError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu")
        if self.device.type not in ("cpu", "cuda"):
            raise BudgetError(f"--device {device!r} is not supported; accepted: cpu, cuda")
        if link_gbps is not None and self.device.type != "cuda":
            raise BudgetError(f"link_gbps={link_gbps} emulates a slower PCIe link and needs device cuda, not {device}")
        if link_gbps is not None and not link_gbps > 0:
            raise BudgetError(f"link_gbps must be a positive rate in GB/s, not {link_gbps}")
        # a checkpoint directory, or an object that loads like one (`shapes.RandomSource`: paper shapes)
        self.ckpt = Checkpoint(model_dir) if isinstance(model_dir, (str, os.PathLike)) else model_dir
        self.policy = policy if isinstance(policy, ExpertPolicy) else make_policy(policy, **(policy_params or {}))
        config = self.ckpt.config
        self.dtype = self.ckpt.dtype
        self.batch = batch

        self.model = skeleton_on_meta(self.ckpt, self.dtype)
        blocks = moe_blocks(self.model)
        if not blocks:
            raise CheckpointError(f"{str(self.ckpt.path)!r}: no MoE layers found in the model")
        num_experts, shape = expert_shape(next(iter(blocks.values())))
        top_k = next(iter(blocks.values())).gate.top_k
        self.experts: dict[int, OffloadedExperts] = {}
        for layer, block in blocks.items():
            self.experts[layer] = block.experts = OffloadedExperts(layer)
        skeleton_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        expert_bytes = shape.numel * self.dtype.itemsize
        self.info = ModelInfo(
            moe_layers=tuple(blocks),
            num_experts=num_experts,
            top_k=top_k,
            expert_bytes=expert_bytes,
            model_type=config.model_type,
            link_gbps=link_gbps,
        )
        grouped = default_grouped(self.device) if grouped_experts is None else grouped_experts
        if grouped not in GROUPED:
            raise BudgetError(f"grouped_experts={grouped!r} is not one of {', '.join(GROUPED)}")
        if grouped in ("slots", "graphs") and not grouped_kernel.available(self.device):
            raise BudgetError(f"grouped_experts={grouped!r} needs Triton and a CUDA device (device {device}); "
                              f"use 'gather' or 'off'")
        self.memory = plan_memory(
            config=config,
            skeleton_bytes=skeleton_bytes,
            expert_bytes=expert_bytes,
            dtype_bytes=self.dtype.itemsize,
            num_experts=num_experts,
            num_moe_layers=len(blocks),
            top_k=top_k,
            batch=batch,
            kv_tokens=kv_tokens,
            budget_gb=budget_gb,
            cache_experts=cache_experts,
            gathered=grouped == "gather",
        )
        preload = list(self.policy.setup(self.info, self.memory.capacity))

        load_skeleton(self.model, self.ckpt, self.device, self.dtype)
        if host_store is None:
            store = HostStore(self.info.moe_layers, num_experts, shape, self.dtype, pin=self.device.type == "cuda")
            store.fill(lambda layer, e, out: self.ckpt.read_expert(layer, e, out, shape))
        else:  # the routed experts of this very model, already in host memory (many runs, one fill)
            store = host_store
            if (tuple(store.data), store.num_experts, store.shape, store.dtype) != (
                    self.info.moe_layers, num_experts, shape, self.dtype):
                raise CheckpointError(f"the host store given holds experts of another shape than {str(self.ckpt.path)!r}")
        self.store = store
        self.link_gbps = link_gbps
        self.pool = SlotPool(self.memory.capacity, store, self.device, link=self._link(link_gbps, expert_bytes))
        act = ACT2FN[config.get_text_config().hidden_act]
        self.engine = Engine(
            self.policy, self.pool, self.ckpt.family, config, self.info, act,
            cpu_threads=cpu_threads or default_cpu_threads(), trace=trace, trace_predictions=trace_predictions,
            predictor=NextLayerPredictor(self.model, blocks, self.ckpt.family), grouped=grouped,
        )
        self.predictor_graphs = self.device.type == "cuda" if predictor_graphs is None else predictor_graphs
        if self.predictor_graphs:
            self.engine.predictor.compile(capture=self.device.type == "cuda")
        self.skeleton = None
        if skeleton_on:
            self.skeleton = SkeletonGraphs(self.model.model.layers, capture=self.device.type == "cuda",
                                           block=skeleton_on if block_graphs is None else block_graphs)
        self.router_first = [layer for layer, block in blocks.items() if router_first and router_order.applies(block)]
        for layer, block in blocks.items():
            self.experts[layer].engine = self.engine
            block.gate.register_forward_hook(self._capture_logits(layer))
            if layer in self.router_first:
                router_order.install(block, layer, self.skeleton if self.skeleton and self.skeleton.block else None)
        self.engine.preload_keys(preload)
        self.engine.read_copies(wait=True)  # their measured times already tune an emulated link's hold
        self.tokenizer = None
        if self.ckpt.tokenizer_present():
            self.tokenizer = AutoTokenizer.from_pretrained(self.ckpt.path, padding_side="left")
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.convert_ids_to_tokens(0)

    def _capture_logits(self, layer: int):
        target = self.experts[layer]

        def hook(module, inputs, output):
            target.logits = output[0]  # every family's router returns (logits, weights, indices)

        return hook

    # ---- generation ---------------------------------------------------------------------------------
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tokenizer is None:
            raise CheckpointError(f"{str(self.ckpt.path)!r} has no tokenizer; pass token ids instead of text")
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True)
        return enc["input_ids"], enc["attention_mask"]

    def generate(
        self,
        prompts: list[str] | list[list[int]],
        max_new_tokens: int,
        on_logits=None,
        accumulate: bool = False,
        stop=None,
    ) -> Result:
        if not prompts:
            raise PromptError("no prompts given")
        if len(prompts) > self.batch:
            raise PromptError(f"{len(prompts)} prompts exceed the batch size {self.batch} the runtime was sized for")
        if not hasattr(self, "engine"):
            raise SmoeError("this Runtime was closed; make a new one")
        if isinstance(prompts[0], str):
            ids, mask = self.encode(prompts)  # type: ignore[arg-type]
        else:
            ids, mask = pad_left(prompts, pad_id=self.pad_id)  # type: ignore[arg-type]
            vocab = self.ckpt.config.get_text_config().vocab_size
            bad = ids[(mask == 1) & ((ids < 0) | (ids >= vocab))]
            if bad.numel():
                raise PromptError(f"token id {int(bad[0])} is outside the vocabulary (0..{vocab - 1})")
        limit = getattr(self.ckpt.config.get_text_config(), "max_position_embeddings", None)
        if limit is not None and ids.shape[1] + max_new_tokens > limit:
            raise PromptError(
                f"prompt of {ids.shape[1]} tokens + {max_new_tokens} new tokens exceeds the model's context of "
                f"{limit} tokens"
            )
        if max_new_tokens < 1:
            raise PromptError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        eng = self.engine
        if not accumulate:  # counters and trace are per call unless accumulating; the cache always persists
            eng.metrics = Metrics(preload_loads=eng.metrics.preload_loads)
            if eng.trace is not None:
                eng.trace = []

        def on_forward(phase: str, step: int) -> None:
            eng.phase, eng.step = phase, step

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with gc_paused():
            cache = None
            if self.kv_cache == "static":
                cache = self._static_cache(ids.shape[0], ids.shape[1] + max_new_tokens)
            decoded = greedy_decode(
                self.model, ids.to(self.device), mask.to(self.device), max_new_tokens, on_forward, on_logits, stop,
                cache=cache,
            )
        eng.read_copies(wait=True)  # the last copies' measured times, so the next call starts with none unread
        eng.metrics.ttft_list.append(decoded.ttft_s)
        eng.metrics.step_s.extend(decoded.step_s)
        eng.metrics.queue_s.extend(decoded.queue_s)
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:  # logical accounting: what the device would hold
            per_token = kv_bytes_per_token(self.ckpt.config.get_text_config(), self.dtype.itemsize)
            kv = per_token * ids.shape[0] * (self._static[1] if cache is not None else ids.shape[1] + max_new_tokens)
            peak = self.memory.skeleton_bytes + self.memory.pool_bytes + kv
        eng.metrics.peak_device_bytes = max(eng.metrics.peak_device_bytes, peak)
        return Result(tokens=decoded.tokens.tolist(), metrics=eng.metrics.summary())

    STATIC_KV_STEP = 256  # a static cache's positions are a multiple of this, so calls of similar length share it

    def _static_cache(self, batch: int, positions: int) -> StaticCache:
        """An empty static KV cache for `batch` sequences of up to `positions` tokens: the last call's, reset, where
        it fits (same batch, enough positions), so the graphs made over its buffers serve again; else a new one."""
        held = getattr(self, "_static", None)  # (batch, positions, cache)
        if held is not None and held[0] == batch and held[1] >= positions:
            held[2].reset()
            return held[2]
        # rounded up, but not past what the memory plan reserves for the batch unless the call itself needs more
        size = max(positions, min(-(-positions // self.STATIC_KV_STEP) * self.STATIC_KV_STEP, self.kv_tokens // batch))
        self._static = (batch, size, StaticCache(config=self.model.config, max_cache_len=size))
        return self._static[2]

    @torch.no_grad()
    def forward_logits(self, seqs: list[list[int]], accumulate: bool = False) -> torch.Tensor:
        """One forward over token sequences (left-padded, no KV cache kept) -> logits [B,S,V] on the device.
        Counted as a prefill. Used for log-likelihoods (lm-eval)."""
        if len(seqs) > self.batch:
            raise PromptError(f"{len(seqs)} sequences exceed the batch size {self.batch} the runtime was sized for")
        ids, mask = pad_left(seqs, pad_id=self.pad_id)
        eng = self.engine
        if not accumulate:
            eng.metrics = Metrics(preload_loads=eng.metrics.preload_loads)
        eng.phase, eng.step = "prefill", 0
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits

    def generate_all(self, prompts: list, max_new_tokens: int) -> Result:
        """Every prompt, in consecutive batches of the runtime's batch size (the last may be smaller), with
        metrics accumulated over all of them and the expert cache carried from batch to batch."""
        tokens: list[list[int]] = []
        for i in range(0, len(prompts), self.batch):
            res = self.generate(prompts[i : i + self.batch], max_new_tokens, accumulate=i > 0)
            tokens += res.tokens
        return Result(tokens=tokens, metrics=res.metrics)

    @property
    def pad_id(self) -> int:
        if self.tokenizer is not None and self.tokenizer.pad_token_id is not None:
            return self.tokenizer.pad_token_id
        return 0

    def environment(self) -> dict:
        env = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "code": provenance.code(),  # the sources' fingerprint and the git commit, where there is one
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "cpu_threads": self.engine.cpu_threads,
            "link_gbps": self.link_gbps,  # None: the machine's own link; else emulated (`hardware.EmulatedLink`)
            # the emulated link's spin now and how often it has been tuned to the measured copy times
            "link_hold": ({"cycles": self.pool.link.hold_cycles, "rounds": self.pool.link.tuner.rounds}
                          if self.pool.link is not None else None),
            "predictor_graphs": self.predictor_graphs,
            # host time spent capturing the predictor's graphs (on their first use, inside the timed steps)
            "predictor_capture_s": self.engine.predictor.pieces.capture_s if self.predictor_graphs else 0.0,
            "skeleton_graphs": len(self.skeleton.installed) if self.skeleton else 0,  # layers served by them
            # layers whose feed-forward half (but the routed experts) the graphs serve too
            "block_graphs": len(self.skeleton.installed) if self.skeleton and self.skeleton.block else 0,
            "grouped_experts": self.engine.grouped,  # how decode computed a layer's resident experts (GROUPED)
            "router_first": len(self.router_first),  # MoE blocks that ran their router before their shared expert
            "kv_cache": self.kv_cache,  # KV_CACHES
            "skeleton_capture_s": self.skeleton.capture_s if self.skeleton else 0.0,
            # host time spent capturing the batched products' graphs ("graphs"), on their first use in the timed steps
            "grouped_capture_s": self.engine.products.capture_s if self.engine.products is not None else 0.0,
        }
        return env

    def _link(self, gbps: float | None, nbytes: int):
        if gbps is None:
            return None
        try:
            return EmulatedLink(gbps, nbytes)
        except ValueError as e:
            raise BudgetError(str(e)) from None

    def close(self) -> None:
        """Stop the CPU worker and free the device and pinned host memory now (not at garbage collection)."""
        if not hasattr(self, "engine"):
            return  # already closed
        self.engine.close()
        if self.skeleton is not None:
            self.skeleton.release(self.model.model.layers)
        for name in ("engine", "pool", "model", "experts", "store", "_static"):
            self.__dict__.pop(name, None)
        gc.collect()
        if self.device.type == "cuda":
            # cuBLAS keeps a workspace per stream it ran on (each run's copy stream and graph-capture streams are
            # new): measured on the H200, 66 MiB left allocated per closed runtime, which a process running many
            # counted against the next one's budget. Freed here; cuBLAS makes new ones when it next needs them.
            torch._C._cuda_clearCublasWorkspaces()
            torch.cuda.empty_cache()


@contextmanager
def gc_paused():
    """Python's cyclic garbage collector off for one generate call (reference counting still frees): its
    collections, triggered by the many small objects planning makes, pause the host in the middle of decode
    steps. Measured on the CPU replay of deepseek's shape (509 slots, batch 3, the 2nd and 3rd run of a process):
    smoe TPOT 77 -> 65 ms; lru and hybrimoe unchanged."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids [B,S], mask [B,S]), left-padded."""
    S = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), S), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), S, dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            raise PromptError(f"prompt {i} is empty")
        ids[i, S - len(s) :] = torch.as_tensor(s)
        mask[i, S - len(s) :] = 1
    return ids, mask
