"""Routing replay: a model's routers answer with router scores recorded from another model's run.

Where it sits: paper-scale runs on random weights (`shapes.RandomSource`), whose own routers are
meaningless. A trace (`smoe run --trace`, the engine's records) holds, per MoE layer and forward, the
scores [T,E] of every token, and, when recorded by this version, the runtime predictor's predictions of
the next layers' scores. `RoutingReplay.install(runtime)` makes the run's i-th MoE layer route with the
trace's i-th MoE layer (the first N layers of a deeper trace are used) and the shape's own top-k and
weighting rule; the predictor returns the recorded predictions, so prefetching policies see predictions
as good as the recorded model's own, not a random router's. With `oracle`, the predictor returns instead the
scores the target layer will route by in this same forward (the trace's own), a perfect prediction at any distance:
a measurement of how much prefetching could gain, never a contender (the prediction is still computed and waited
for, so its cost is paid as in any run). With `known`, the engine takes each layer's scores, top-k and weights, and
the policy its predictions, from the trace on the host instead of reading them back from the device: the host never
waits for the device inside a decode step, so it queues layers ahead of the device, as decisions made on the device
would let it (the device still routes and predicts; nothing is read back). Another measurement: what taking the
decisions off the host's critical path could gain at most, never a contender. The run must feed the same number of
tokens per forward as the recorded one: `segments()` gives each recorded generate call's (batch, prompt length,
new tokens), and a mismatch is an error, never a silent misalignment.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .errors import SmoeError
from .predict import key_distance


class RoutingReplay:
    def __init__(self, records: list[dict], run_layers: tuple[int, ...], name: str = "trace", oracle: bool = False,
                 known: bool = False):
        self.name = name
        self.oracle = oracle
        self.known = known
        self.run_layers = tuple(run_layers)
        by_layer: dict[int, list[dict]] = defaultdict(list)
        for r in records:
            by_layer[r["layer"]].append(r)
        trace_layers = sorted(by_layer)
        if len(trace_layers) < len(run_layers):
            raise SmoeError(f"{name} has {len(trace_layers)} MoE layers; the model has {len(run_layers)}, "
                            f"so its routing cannot be replayed layer for layer")
        self.layer_map = dict(zip(run_layers, trace_layers))  # run layer -> trace layer
        self.records = {run: by_layer[tr] for run, tr in self.layer_map.items()}
        counts = {len(v) for v in self.records.values()}
        assert len(counts) == 1, f"layers of {name} hold different numbers of forwards: {counts}"
        self.cursor = dict.fromkeys(run_layers, 0)
        self.current: dict[int, dict] = {}
        self._pending: dict[int, dict] = {}

    @classmethod
    def load(cls, path: str | Path, run_layers: tuple[int, ...], oracle: bool = False,
             known: bool = False) -> "RoutingReplay":
        data = torch.load(path, weights_only=False)
        return cls(data["records"], run_layers, name=str(path), oracle=oracle, known=known)

    def segments(self) -> list[tuple[int, int, int]]:
        """Each recorded generate call as (batch B, prompt length L, new tokens N): its prefill has B*L
        tokens and is followed by N-1 decode forwards of B tokens."""
        recs = next(iter(self.records.values()))
        out: list[tuple[int, int, int]] = []
        for i, r in enumerate(recs):
            if r["phase"] != "prefill":
                continue
            decodes = 0
            while i + 1 + decodes < len(recs) and recs[i + 1 + decodes]["phase"] == "decode":
                decodes += 1
            if decodes == 0:
                raise SmoeError(f"{self.name}: a prefill with no decode step; cannot tell its batch size")
            B = recs[i + 1]["scores"].shape[0]
            T = r["scores"].shape[0]
            if T % B:
                raise SmoeError(f"{self.name}: prefill of {T} tokens is not a whole batch of {B}")
            out.append((B, T // B, decodes + 1))
        return out

    # ---- hooks ------------------------------------------------------------------------------------------
    def install(self, runtime) -> None:
        """Route `runtime`'s MoE layers by the trace (forward hooks on its blocks and routers). Every forward's
        routing (the router's outputs made from the recorded scores) is made here, on the device, before the run:
        a timed forward only hands it over, as a router's own few kernels would, instead of about ten more."""
        family, config = runtime.ckpt.family, runtime.ckpt.config
        if family.scoring != "softmax":
            raise SmoeError(f"routing replay needs a softmax router; {family.model_type} scores by {family.scoring}")
        top_k = runtime.info.top_k
        renorm, scale = family.renormalises(config), family.scaling(config)
        blocks = runtime.engine.predictor.blocks
        hidden = config.get_text_config().hidden_size
        for layer in runtime.info.moe_layers:
            gate = blocks[layer].gate
            # the router's output dtypes: its own forward (no hooks) on one zero token
            probe = gate.forward(torch.zeros(1, hidden, dtype=runtime.dtype, device=runtime.device))
            dtypes = probe[0].dtype, probe[1].dtype
            for r in self.records[layer]:
                r["routed"] = self._route(r["scores"].to(runtime.device, torch.float32), top_k, renorm, scale, *dtypes)
                if self.known:  # what the engine would read back: the family's scores [T,E] float32 of the logits the
                    # router hands over, made by the same kernel on the same device, its top-k [T,K] and weights [T,K]
                    logits, weights, idx = r["routed"]
                    r["known"] = (family.scores(logits).cpu().numpy(), idx.cpu().numpy(), weights.cpu())
                if "predicted_np" not in r:  # [T,E] each, as the runtime reads predictions back: float32 arrays
                    r["predicted_np"] = {k: v.float().numpy() for k, v in (r.get("predicted") or {}).items()}
            blocks[layer].register_forward_pre_hook(self._next_record(layer))
            gate.register_forward_hook(self._replace(layer), prepend=True)
        runtime.engine.predictor.replay = self
        if self.known:
            runtime.engine.known_routing = self.routing

    @staticmethod
    def _route(scores: torch.Tensor, top_k: int, renorm: bool, scale: float, logits_dtype, weights_dtype):
        """Recorded probabilities scores [T,E] -> what the router returns: logits [T,E] whose softmax they are, the
        top-k weights [T,K] by the shape's rule, and the top-k ids [T,K]."""
        new_logits = scores.clamp_min(1e-12).log()  # softmax(new_logits) == scores
        probs = new_logits.softmax(dim=-1)
        # [T,k]; scores are kept in float16, so ties happen: a stable sort gives them to the lower id on every
        # device (topk's order among ties differs between CPU and GPU)
        idx = probs.argsort(dim=-1, descending=True, stable=True)[:, :top_k]
        top = probs.gather(-1, idx)
        if renorm:
            top = top / top.sum(dim=-1, keepdim=True)
        return new_logits.to(logits_dtype), (top * scale).to(weights_dtype), idx

    def _next_record(self, layer: int):
        def hook(module, args):
            i = self.cursor[layer]
            if i >= len(self.records[layer]):
                raise SmoeError(f"{self.name} holds {i} forwards of layer {layer}; the run asked for more")
            self.cursor[layer] = i + 1
            self._pending[layer] = self.current[layer] = self.records[layer][i]

        return hook

    def _replace(self, layer: int):
        def hook(module, inputs, output):
            rec = self._pending.pop(layer, None)
            if rec is None:  # a router call outside the block's forward (e.g. a predictor): left alone
                return None
            logits, weights, idx = rec["routed"]
            if logits.shape != output[0].shape:
                raise SmoeError(f"{self.name}: layer {layer} forward {self.cursor[layer]} recorded scores of shape "
                                f"{tuple(logits.shape)}; the run routes {tuple(output[0].shape)} (feed `segments()`)")
            assert (logits.dtype, weights.dtype) == (output[0].dtype, output[1].dtype), "router dtypes changed"
            return (logits, weights, idx, *output[3:])

        return hook

    def routing(self, layer: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """`known`: the current forward's routing of `layer` on the host, as the engine would read it back: scores
        [T,E] float32 and top-k [T,K] int64 (arrays), the router's weights [T,K] (a tensor); copies, the caller's to
        keep."""
        scores, topk, weights = self.current[layer]["known"]
        return scores.copy(), topk.copy(), weights.clone()

    def predicted(self, layer: int, key: str) -> np.ndarray:
        """The recorded prediction [T,E] float32 (read-only), made at `layer`'s current forward, recorded under `key`
        (`predict.prediction_key`, `predict.early_key`); with `oracle`, the scores [T,E] the MoE layer that `key`'s
        distance ahead routes by in this forward."""
        if self.oracle:
            return self._oracle(layer, key)
        rec = self.current[layer]
        pred = rec["predicted_np"].get(key)
        if pred is None:
            raise SmoeError(f"{self.name} has no recorded prediction {key!r} at layer {self.layer_map[layer]} "
                            f"({rec['phase']} step {rec['step']}); record the trace again with this version")
        return pred

    def _oracle(self, layer: int, key: str) -> np.ndarray:
        distance = key_distance(key)
        i = self.run_layers.index(layer) + distance
        if i >= len(self.run_layers):
            raise SmoeError(f"oracle prediction {key!r} at layer {layer}: no MoE layer {distance} ahead")
        target = self.records[self.run_layers[i]][self.cursor[layer] - 1]  # this forward's record of that layer
        if "scores_np" not in target:
            target["scores_np"] = target["scores"].float().numpy()
        return target["scores_np"]


REPLAY_KEYS = ("layer", "phase", "step", "scores", "predicted")


def save_trace(path: str | Path, model: str, policy: str, runtime) -> None:
    """Write `runtime`'s engine trace to `path` (whole or not at all), with what routed it: the model, the policy and
    the router's expert count and top-k (`router`), so a replayed run can say whose routing it replayed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = runtime.info
    router = {"model_type": info.model_type, "num_experts": info.num_experts, "top_k": info.top_k}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"model": model, "policy": policy, "router": router, "records": runtime.engine.trace}, tmp)
    tmp.replace(path)


def trace_provenance(paths: dict[str, Path]) -> dict[str, dict]:
    """name -> trace file: each file's sha256, and the model, policy and router that recorded it (`save_trace`;
    None where a trace predates the router field)."""
    out = {}
    for name, path in paths.items():
        data = torch.load(path, weights_only=False, mmap=True)
        out[name] = {"sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(), "model": data.get("model"),
                     "policy": data.get("policy"), "router": data.get("router")}
    return out


def slim_traces(src: str | Path, dst: str | Path) -> list[Path]:
    """Copy every `*.pt` trace under `src` to the same place under `dst`, keeping only what replay reads
    (router scores and recorded predictions: about 70% of a trace), e.g. to carry them to a GPU machine."""
    src, dst = Path(src), Path(dst)
    written = []
    for path in sorted(src.rglob("*.pt")):
        data = torch.load(path, weights_only=False)
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        records = [{k: r[k] for k in REPLAY_KEYS if k in r} for r in data["records"]]
        torch.save({k: v for k, v in data.items() if k != "records"} | {"records": records}, out)
        written.append(out)
    if not written:
        raise SmoeError(f"no *.pt traces under {str(src)!r}")
    return written


def run_replayed(source, policy: str, trace: str | Path, batch: int, *, device: str = "cpu",
                 budget_gb: float | None = None, cache_experts: int | None = None, params: dict | None = None,
                 host_store=None, seed: int = 0, record_trace: str | Path | None = None,
                 link_gbps: float | None = None, max_segments: int | None = None,
                 predictor_graphs: bool | None = None, skeleton_graphs: bool | None = None,
                 block_graphs: bool | None = None, cpu_threads: int | None = None, grouped_experts: str | None = None,
                 router_first: bool = True, kv_cache: str | None = None, oracle_predictions: bool = False,
                 known_routing: bool = False) -> dict:
    """One run of `source` (e.g. a `shapes.RandomSource`) routed by `trace`: every generate call of the trace
    again, with random prompt ids of the recorded lengths. Returns a record shaped like `cli.run_one`'s (plus
    `prefetch_accuracy`); `record_trace` also saves this run's own trace (what belady reads); `max_segments` replays
    only the trace's first generate calls; `oracle_predictions` hands prefetching policies the trace's own scores of
    the layers they predict (`RoutingReplay`'s oracle: a measurement, not a contender); `known_routing` hands the
    host every layer's routing and predictions from the trace, so it never waits for the device within a step
    (`RoutingReplay`'s known: another measurement)."""
    from .costmodel import model_costs
    from .policy import resolved_params
    from .runtime import Runtime
    from .trace_stats import plan_summary, prefetch_accuracy

    torch.manual_seed(seed)
    rt = Runtime(source, policy, device=device, batch=batch, budget_gb=budget_gb, cache_experts=cache_experts,
                 policy_params=params, host_store=host_store, trace=True, kv_tokens=4096, link_gbps=link_gbps,
                 predictor_graphs=predictor_graphs, skeleton_graphs=skeleton_graphs, block_graphs=block_graphs,
                 cpu_threads=cpu_threads,
                 grouped_experts=grouped_experts, router_first=router_first, kv_cache=kv_cache)
    try:
        replay = RoutingReplay.load(trace, rt.info.moe_layers, oracle=oracle_predictions, known=known_routing)
        replay.install(rt)
        g = torch.Generator().manual_seed(seed)
        prompts: list[list[int]] = []
        for i, (B, L, N) in enumerate(replay.segments()[:max_segments]):
            if B > batch:
                raise SmoeError(f"{trace} was recorded at batch {B}; this run is sized for batch {batch}")
            ids = torch.randint(0, source.config.vocab_size, (B, L), generator=g).tolist()
            prompts += ids
            res = rt.generate(ids, N, accumulate=i > 0)
        if record_trace is not None:
            save_trace(record_trace, str(source.path), policy, rt)
        return {
            "params": {"model": str(source.path), "policy": policy, "policy_params": dict(params or {}),
                       "policy_resolved": resolved_params(rt.policy),
                       "device": device, "batch": batch, "max_new_tokens": N, "budget_gb": budget_gb,
                       "cache_experts": cache_experts, "seed": seed, "prompts": prompts, "replay": str(trace),
                       "link_gbps": link_gbps, "max_segments": max_segments,
                       "oracle_predictions": oracle_predictions, "known_routing": known_routing},
            "memory": rt.memory.asdict(),
            "metrics": res.metrics,
            "prefetch_accuracy": prefetch_accuracy(rt.engine.trace, getattr(rt.policy, "alpha", 0.0), rt.info.top_k),
            "plans": plan_summary(rt.engine.trace),  # [step, layer, T, device, loads, cpu, prefetches] per forward
            "costs": asdict(model_costs(rt)),  # bytes a forward moves: what a cost model needs besides the plans
            "env": rt.environment(),
            "tokens": [],  # a random model's tokens mean nothing
        }
    finally:
        rt.close()


def filled_host_store(source, device: str = "cpu"):
    """The host store of `source`'s routed experts, filled once, to hand to many runs (`host_store=`)."""
    from .runtime import Runtime

    rt = Runtime(source, "lru", device=device, cache_experts=source.config.num_experts)
    store = rt.store
    rt.close()
    return store
