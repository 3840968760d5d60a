"""Predicting the next MoE layer's router scores while the current layer computes (for prefetching).

Where it sits: a runtime mechanism that policies call through `PrefetchContext.predict` from their
`prefetch` hook; it runs only skeleton modules that are on the device. For MoE layer i, followed directly
by MoE layer i+1, it approximates layer i's output hidden state as

    h ~ residual_i + shared_experts_i(x_i) + (the routed experts of layer i computed so far on the device)

and runs layer i+1's input norm, then (with `attention=True`) layer i+1's attention over the KV cache read
but not written, then its post-attention norm and its router. `attention=False` is the cheaper variant the
public SMoE code uses: the attention is skipped. Returns scores [T,E] on the device.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .metrics import span


def static_layer(cache, layer_idx: int, filled: bool = True):
    """The cache's layer `layer_idx` if it is a transformers `StaticLayer` (fixed-size keys and values
    [B,kv_heads,max_len,d], the next position in its device counter `cumulative_length`) and, with `filled`, has
    had its first update; else None."""
    layers = getattr(cache, "layers", None)
    if layers is None or layer_idx >= len(layers):
        return None
    layer = layers[layer_idx]
    if type(layer).__name__ != "StaticLayer" or (filled and not getattr(layer, "is_initialized", False)):
        return None
    return layer


def write_kv(layer, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """New keys and values [B,kv_heads,n,d] into a static layer from position `pos` (a 0-dim device tensor) on, its
    counter left as it is (what `StaticLayer.update` writes, without advancing)."""
    n = k.shape[-2]
    at = pos.view(1) if n == 1 else pos + torch.arange(n, device=pos.device)
    layer.keys.index_copy_(2, at, k)
    layer.values.index_copy_(2, at, v)


class ReadOnlyCache:
    """Looks like a transformers cache to one attention call: returns past + new, and leaves the cache as the
    layer's own call will find it. A dynamic layer stores nothing; a static layer gets the new keys and values at
    its next positions, which the layer's own call overwrites before it reads them, and its counter is not moved."""

    def __init__(self, cache):
        self.cache = cache

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        static = static_layer(self.cache, layer_idx, filled=False)
        if static is not None:
            if not static.is_initialized:  # a prefill's prediction: allocated as the layer's own first update would
                static.lazy_initialization(key_states, value_states)
            write_kv(static, static.cumulative_length, key_states, value_states)
            return static.keys, static.values
        layer = self.cache.layers[layer_idx]
        if not getattr(layer, "is_initialized", True) or layer.keys is None or layer.keys.numel() == 0:
            return key_states, value_states
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)

    def __getattr__(self, name):
        return getattr(self.cache, name)


EARLY_KEY = "early1"  # what a trace records `NextLayerPredictor.early` under
EARLY_ATTENTION_KEY = "earlyattn1"  # ... and `NextLayerPredictor.early(..., attention=True)`


def early_key(attention: bool) -> str:
    """What a trace records an early prediction under, with or without the next layer's attention."""
    return EARLY_ATTENTION_KEY if attention else EARLY_KEY


def prediction_key(attention: bool, distance: int) -> str:
    """What a trace records a prediction under: `attn1` (the next MoE layer, its attention run), `noattn{d}` (the MoE
    layer `distance` ahead, no layer in between run)."""
    return f"{'attn' if attention else 'noattn'}{distance}"


def key_distance(key: str) -> int:
    """A prediction's key (`prediction_key`, `early_key`) -> how many MoE layers ahead it predicts."""
    return int(key.lstrip("abcdefghijklmnopqrstuvwxyz"))


def shared_output(block: nn.Module, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor | None:
    """The always-on shared experts' contribution of a MoE block, as its family computes it. x [T,H]; `out`
    [T,H]: the ungated shared expert's output on x where the block has computed it already."""
    if hasattr(block, "shared_expert"):  # Qwen2-MoE: a gated shared expert
        out = block.shared_expert(x) if out is None else out
        gate = getattr(block, "shared_expert_gate", None)
        return out * torch.sigmoid(gate(x)) if gate is not None else out
    if hasattr(block, "shared_experts"):  # DeepSeek
        return block.shared_experts(x)
    return None


class NextLayerPredictor:
    def __init__(self, model, blocks: dict[int, nn.Module], family):
        self.layers = model.model.layers
        self.blocks = blocks
        self.family = family
        self.residual: dict[int, torch.Tensor] = {}  # layer -> input of its post-attention norm [B,S,H]
        self.kwargs: dict = {}  # the decoder-layer kwargs of the current forward (mask, rotary, cache)
        self.pieces = None  # `predict_graphs.PredictorPieces` once `compile` is called
        self.replay = None  # a `replay.RoutingReplay`: predictions come from its trace instead
        # Qwen2-MoE blocks run their shared expert before the routed experts: its output is kept for the
        # prediction, which then does not compute it again (keyed by the input tensor, so never stale)
        self.shared: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (input [T,H], output [T,H])
        for i, block in blocks.items():
            self.layers[i].post_attention_layernorm.register_forward_pre_hook(self._keep_residual(i))
            if hasattr(block, "shared_expert"):
                block.shared_expert.register_forward_hook(self._keep_shared(i))
        self.layers[0].register_forward_pre_hook(self._keep_kwargs, with_kwargs=True)

    def _keep_residual(self, i: int):
        def hook(module, args):
            self.residual[i] = args[0]

        return hook

    def _keep_shared(self, i: int):
        def hook(module, args, output):
            self.shared[i] = (args[0], output)

        return hook

    def _keep_kwargs(self, module, args, kwargs):
        self.kwargs = kwargs

    def next_layer(self, layer: int) -> int | None:
        """The MoE layer right after `layer`, if the next decoder layer is one (else no prediction)."""
        return layer + 1 if layer + 1 in self.blocks else None

    def distance(self, layer: int, target: int) -> int:
        """How many MoE layers `target` lies after `layer`."""
        layers = sorted(self.blocks)
        return layers.index(target) - layers.index(layer)

    def seen_shared(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """The ungated shared expert output [T,H] the block computed on this very input x, if any."""
        seen = self.shared.get(layer)
        return seen[1] if seen is not None and seen[0] is x else None

    def approx_output(self, layer: int, x: torch.Tensor, partial: torch.Tensor | None) -> torch.Tensor:
        """Layer's output hidden state [B,S,H] ~ residual + shared experts + routed experts so far (None: none)."""
        return self.approx_hidden(self.blocks[layer], self.residual[layer], x, partial, self.seen_shared(layer, x))

    @staticmethod
    def approx_hidden(block, residual, x, partial, shared=None) -> torch.Tensor:
        """residual [B,S,H] + partial [T,H] (None: no routed expert counted) + the block's shared experts on x [T,H]
        (`shared` [T,H]: the ungated shared expert output the block computed, if any) -> [B,S,H]."""
        B, S, H = residual.shape
        h = residual.reshape(-1, H)
        if partial is not None:
            h = h + partial.to(residual.dtype)
        shared = shared_output(block, x, shared)
        if shared is not None:
            h = h + shared.to(h.dtype)
        return h.view(B, S, H)

    def compile(self, capture: bool) -> None:
        """Run decode predictions (one new token per sequence) as fixed-shape pieces (`predict_graphs`):
        captured as CUDA graphs with `capture`, else eagerly (what the tests compare on a CPU)."""
        from .predict_graphs import PredictorPieces

        self.pieces = PredictorPieces(self, capture)

    def _pieces_for(self, layer: int):
        """The pieces, when they serve this call: a decode step (S = 1)."""
        if self.pieces is None or self.residual[layer].shape[1] != 1:
            return None
        return self.pieces

    @torch.no_grad()
    def gate_scores(self, layer: int, x: torch.Tensor, partial: torch.Tensor | None, target: int) -> torch.Tensor:
        """Scores [T,E] on the device of a later MoE layer's router applied to this layer's approximate output,
        with no layer in between run (HybriMoE's multi-layer look-ahead). `partial` None: the output without any
        routed expert (`early`)."""
        pieces = self._pieces_for(layer)
        if pieces is not None:
            return pieces.gate_scores(layer, x, partial, target)
        h = self.approx_output(layer, x, partial)
        dec = self.layers[target]
        return self.family.scores(self.blocks[target].gate(dec.post_attention_layernorm(h).flatten(0, 1))[0])

    def replayed(self, scores: np.ndarray | None, layer: int, key: str) -> np.ndarray:
        """A prediction read back to the host [T,E] float32 -> what the policy gets: under routing replay the one
        recorded with the trace under `key` (`prediction_key`), which matches the replayed routing (the prediction was
        still computed, and waited for unless the replay's routing is `known`, where `scores` is None: its cost is
        paid); else the prediction itself."""
        if self.replay is None:
            return scores
        return self.replay.predicted(layer, key)

    @torch.no_grad()
    def early(self, layer: int, x: torch.Tensor, attention: bool = False) -> torch.Tensor:
        """x [T,H]: layer's normed input -> the next MoE layer's scores [T,E] on the device, predicted from the
        layer's output without its routed experts (residual + shared experts: the public SMoE code's approximation),
        without the next layer's attention (the public code) or with it (`attention`: the paper's predictor on that
        approximation). It needs no routed expert, so the engine queues it right behind the layer's router and
        shared expert and reads it back with no wait of its own."""
        nxt = self.next_layer(layer)
        assert nxt is not None
        if attention:
            return self.predict(layer, x, None, True)
        return self.gate_scores(layer, x, None, nxt)

    @torch.no_grad()
    def predict(self, layer: int, x: torch.Tensor, partial: torch.Tensor | None, attention: bool) -> torch.Tensor:
        """x [T,H]: layer's normed input; partial [T,H]: its routed output so far (None: none counted) -> next
        layer's scores [T,E], on the device."""
        nxt = self.next_layer(layer)
        assert nxt is not None
        pieces = self._pieces_for(layer)
        if pieces is not None:
            if not attention:
                return pieces.gate_scores(layer, x, partial, nxt)
            if pieces.lean_attention(self.layers[nxt].self_attn):
                return pieces.predict_attention(layer, x, partial)
        h = self.approx_output(layer, x, partial)
        B, S, H = h.shape
        dec = self.layers[nxt]
        if attention:
            kw = dict(self.kwargs)
            cache_key = "cache" if "cache" in kw else "past_key_values"
            if kw.get(cache_key) is not None:
                kw[cache_key] = ReadOnlyCache(kw[cache_key])
            kw.pop("use_cache", None)
            attn_out = dec.self_attn(
                hidden_states=dec.input_layernorm(h),
                attention_mask=kw.pop("attention_mask", None),
                position_embeddings=kw.pop("position_embeddings", None),
                **{k: v for k, v in kw.items() if k in (cache_key, "position_ids", "cache_position")},
            )[0]
            h = h + attn_out
        logits = self.blocks[nxt].gate(dec.post_attention_layernorm(h).reshape(B * S, H))[0]
        return self.family.scores(logits)


class PrefetchContext:
    """What a policy's `prefetch` hook gets besides the layer view: the layer's input and, on demand, the
    predicted router scores of the next MoE layer (or of later ones).

    A prediction is queued on the compute stream and its copy to the host started; before the host waits for it,
    `then` queues the rest of the layer's device work (its experts prefetched for it and its loads), once, so the
    device computes them while the host waits and then decides the prefetch. The prediction reads the layer's
    output as `partial` gave it at the first request (the experts resident before this layer's prefetches).
    The `early` prediction (a policy's `early_prediction`) was queued by the engine before it read the layer's
    router scores; its copy has usually landed by the time `early()` reads it."""

    def __init__(self, layer: int, hidden: torch.Tensor, partial, predictor: NextLayerPredictor | None,
                 staging, then=None, early=None, early_key: str = EARLY_KEY):
        self.layer = layer
        self.hidden = hidden  # [T,H] the layer's normed input, on the device
        self._partial = partial  # () -> [T,H] this layer's routed output so far (its resident experts)
        self._partial_out: torch.Tensor | None = None  # what it gave at the first request
        self._predictor = predictor
        self._staging = staging  # the pool's `PinnedStaging`: the read back to the host
        self._then = then  # () -> None: queues the rest of the layer (run at most once)
        self._early = early  # the early prediction's copy to the host under way, if the engine queued it
        self._early_key = early_key  # what a trace records it under (`early_key`)
        self.predict_s = 0.0  # host time spent in predictor passes (the runtime's, not the policy's)
        self.predictions = 0  # predictions read (each one wait; `gate_scores` reads several layers' in one)
        self.then_s = 0.0  # host time spent queueing the rest of the layer (the engine's)

    @property
    def next_layer(self) -> int | None:
        return None if self._predictor is None else self._predictor.next_layer(self.layer)

    def finish_layer(self) -> None:
        """Queue the rest of the layer now, if no prediction has done so."""
        then, self._then = self._then, None
        if then is not None:
            t0 = time.perf_counter()
            then()
            self.then_s += time.perf_counter() - t0

    def partial(self) -> torch.Tensor:
        """[T,H] the layer's routed output from its experts resident before this layer's prefetches."""
        if self._partial_out is None:
            self._partial_out = self._partial()
        return self._partial_out

    def _predicted(self, queue, keys: list[str]) -> list[np.ndarray]:
        """queue() -> the copy to the host of device predictions [T,E] each, started -> on the host as float32 arrays
        (read-only by convention), under replay the ones recorded under `keys`; one wait, after the rest of the layer
        is queued (none under a replay whose routing is `known`: the prediction is queued and never read). The host
        time, less that rest's, is the runtime's predictor time (`predict_s`)."""
        t0, then_s = time.perf_counter(), self.then_s
        self.predictions += 1
        with span("smoe.predict"):
            started = queue()
            self.finish_layer()
            replay = self._predictor.replay
            if replay is not None and replay.known:  # the trace's predictions on the host: nothing read back
                host = [None] * len(keys)
            else:
                host = self._staging.finish_to_host(started, arrays=len(keys))
            out = [self._predictor.replayed(h, self.layer, key) for h, key in zip(host, keys)]
        self.predict_s += time.perf_counter() - t0 - (self.then_s - then_s)
        return out

    def early(self) -> np.ndarray:
        """The next MoE layer's scores [T,E] float32 predicted without this layer's routed experts
        (`NextLayerPredictor.early`), on the host; the engine queued the prediction before planning the layer."""
        assert self._early is not None, "the engine queues an early prediction only for a policy that asks for it"
        return self._predicted(lambda: self._early, [self._early_key])[0]

    def predict(self, attention: bool = True) -> np.ndarray:
        """Predicted scores [T,E] float32 of the next MoE layer, on the host."""
        assert self.next_layer is not None, "no MoE layer follows directly"

        def queue():
            scores = self._predictor.predict(self.layer, self.hidden, self.partial(), attention)
            return self._staging.start_to_host(scores, channel="predict")

        return self._predicted(queue, [prediction_key(attention, 1)])[0]

    def gate_scores(self, targets: list[int]) -> list[np.ndarray]:
        """For each later MoE layer in `targets`: its router on this layer's approximate output [T,E] float32, on the
        host (no layers in between run); one wait for all of them."""
        if not targets:
            return []

        def queue():
            partial = self.partial()
            scores = [self._predictor.gate_scores(self.layer, self.hidden, partial, t) for t in targets]
            return self._staging.start_to_host(*scores, channel="predict")

        return self._predicted(queue, [prediction_key(False, self._predictor.distance(self.layer, t)) for t in targets])
