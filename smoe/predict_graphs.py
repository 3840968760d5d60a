"""The predictor's decode passes as CUDA graphs: one replay per piece instead of 20-50 kernel launches.

Where it sits: `NextLayerPredictor` hands its decode predictions (one new token per sequence, S = 1) here once
`NextLayerPredictor.compile` is called (the runtime does so on a GPU). A decode step at batch 1 is bound by
the host's launch work, and a prediction launched op by op through the HF modules cost about 1.2 ms of host
time per layer for 0.12 ms of GPU time (docs/h200-campaigns.md, the fourth campaign's profile). Here a prediction
is split into pieces of fixed shapes, each captured once per (layer, tokens) and then replayed:
  - `gate` (the prediction without attention, the early one, and HybriMoE's look-ahead): the layer's approximate
    output -> the target layer's post-attention norm -> its router -> scores [T,E];
  - with attention, `pre`: approximate output -> next layer's input norm -> q/k/v projections -> rotary;
    then the attention core runs eagerly (the KV cache grows every step) through the model's own attention
    function over the cache read but not written; then `post`: o_proj -> residual -> post-attention norm ->
    router -> scores [T,E].
The pieces run the HF modules' own submodules (norms, projections, router, the family's rotary function), so
they compute what `NextLayerPredictor`'s op-by-op path computes. Static inputs are copied in before a replay;
outputs live until the next replay of the same piece, and every caller reads them before that. With
`capture=False` the same pieces run eagerly (on a CPU, where the tests compare them with the op-by-op path).
Capture time is counted in `capture_s`; capture happens on the first decode step that needs a piece.
"""
from __future__ import annotations

import sys
import time

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .errors import SmoeError
from .predict import ReadOnlyCache, static_layer, write_kv


def lean_attention(attn) -> bool:
    """Whether an attention module is the plain q/k/v/o + rotary kind the `pre`/`post` pieces rebuild."""
    ns = sys.modules.get(type(attn).__module__)
    return (all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "layer_idx"))
            and not any(hasattr(attn, n) for n in ("q_norm", "k_norm"))
            and getattr(attn, "sliding_window", None) is None
            and hasattr(ns, "apply_rotary_pos_emb") and hasattr(ns, "eager_attention_forward"))


def qkv_rotary(attn, hs: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """A lean attention's projections of its normed input, rotary applied, as the HF module computes them:
    hs [B,S,H], cos/sin [B or 1,S,d] -> q [B,heads,S,d], k/v [B,kv_heads,S,d]."""
    shape = (*hs.shape[:-1], -1, attn.head_dim)
    q = attn.q_proj(hs).view(shape).transpose(1, 2)
    k = attn.k_proj(hs).view(shape).transpose(1, 2)
    v = attn.v_proj(hs).view(shape).transpose(1, 2)
    q, k = sys.modules[type(attn).__module__].apply_rotary_pos_emb(q, k, cos, sin)
    return q, k, v


def attention_core(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, **kwargs) -> torch.Tensor:
    """The model's own attention function (its configured implementation) on q [B,heads,S,d] and the keys and
    values it attends to [B,kv_heads,L,d] -> [B,S,heads,d]."""
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(
        attn.config._attn_implementation, sys.modules[type(attn).__module__].eager_attention_forward)
    return interface(attn, q, k, v, mask, dropout=0.0, scaling=attn.scaling, **kwargs)[0]


class Piece:
    """A function of fixed-shape tensors, captured as a CUDA graph, or run as is when `capture` is off.

    A replay reads its inputs at fixed addresses: each call copies its arguments there (asynchronously: an argument
    on the host must be pinned and stay unchanged until the copy has run), except an argument that already lies
    there. An example in `chained` (the data pointers of other pieces' outputs, which stay put
    between replays) is read in place rather than cloned, so a piece fed by another's output costs no copy."""

    def __init__(self, fn, examples: list[torch.Tensor], capture: bool, stream=None, pool=None,
                 chained: frozenset = frozenset()):
        self.fn = fn
        self.capture = capture
        if not capture:
            return
        # static inputs: a replay reads these addresses
        self.inputs = [t if t.data_ptr() in chained else t.clone() for t in examples]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn(*self.inputs)  # a warm-up outside the capture, so library set-up is not captured
            self.graph = torch.cuda.CUDAGraph()
            self.graph.capture_begin(pool=pool, capture_error_mode="thread_local")
            try:
                self.outputs = fn(*self.inputs)
            finally:
                self.graph.capture_end()
        torch.cuda.current_stream().wait_stream(stream)

    def __call__(self, *args: torch.Tensor):
        if not self.capture:
            return self.fn(*args)
        for dst, src in zip(self.inputs, args):
            if src.data_ptr() != dst.data_ptr():  # an argument not already where the replay reads it
                dst.copy_(src, non_blocking=True)  # from the device, or from pinned host memory kept until it ran
        self.graph.replay()
        return self.outputs


class Pieces:
    """Pieces by what they serve (kind, layer, shapes), each made on its first use; with `capture`, captured on one
    side stream into one memory pool (the pieces of a set run one at a time)."""

    def __init__(self, capture: bool):
        self.capture = capture
        self.pieces: dict[tuple, Piece] = {}
        self.capture_s = 0.0  # host time spent capturing pieces (on a piece's first use)
        self.stream = torch.cuda.Stream() if capture else None  # where pieces are captured
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        self.output_ptrs: frozenset = frozenset()  # data pointers read in place: pieces' outputs, shared inputs
        self._held: dict[tuple, tuple[torch.Tensor, torch.Tensor, int]] = {}  # key -> (buffer, last source, its version)
        self._cache = None  # the static KV cache the "attn" pieces write into (held: never mistaken for a new one)
        self._cache_ptrs: set[int] = set()  # data pointers of that cache's tensors that pieces read in place

    def cache_tensor(self, cache, t: torch.Tensor) -> torch.Tensor:
        """`t`, a tensor of the running generate call's static KV cache (its position counter), which stays where
        it is: pieces made from now on read it there. When the runtime has replaced the cache (a call it did not
        fit), the pieces made over the old one write into buffers no longer in use, so they are dropped, and its
        addresses are no longer read in place (freed addresses are handed out again)."""
        if cache is not self._cache:
            for key in [k for k in self.pieces if k[0] == "attn"]:
                del self.pieces[key]
            self.output_ptrs -= self._cache_ptrs
            self._cache_ptrs = set()
            self._cache = cache
        if self.capture and t.data_ptr() not in self._cache_ptrs:  # once per tensor, not per layer and step
            self._cache_ptrs.add(t.data_ptr())
            self.output_ptrs |= {t.data_ptr()}
        return t

    def shared_input(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """With `capture`: `t` copied into one buffer per (name, shape, dtype) that every piece reads in place, and
        copied only when a call brings another tensor (or `t` changed in place): a decode step's rotary cos/sin, the
        same tensors for every layer, are copied once per step instead of once per layer. Without it, `t` itself."""
        if not self.capture:
            return t
        key = (name, tuple(t.shape), t.dtype)
        held = self._held.get(key)
        if held is None:
            buf = t.clone()
            self.output_ptrs |= {buf.data_ptr()}
        else:
            buf, last, version = held
            if last is not t or version != t._version:
                buf.copy_(t)
        self._held[key] = (buf, t, t._version)  # holds `t`: a later tensor cannot be mistaken for it
        return buf

    def _piece(self, key: tuple, fn, inputs: list[torch.Tensor]) -> Piece:
        piece = self.pieces.get(key)
        if piece is None:
            t0 = time.perf_counter()
            piece = self.pieces[key] = Piece(fn, inputs, self.capture, self.stream, self.pool, self.output_ptrs)
            if self.capture:  # later pieces read this one's outputs where they lie
                self.output_ptrs |= {t.data_ptr() for t in _tensors(piece.outputs)}
            self.capture_s += time.perf_counter() - t0
        return piece


def _tensors(out) -> list[torch.Tensor]:
    """The tensors of a piece's output: a tensor, or a tuple or list of them (other items skipped)."""
    items = out if isinstance(out, (tuple, list)) else (out,)
    return [t for t in items if isinstance(t, torch.Tensor)]


class PredictorPieces(Pieces):
    def __init__(self, predictor, capture: bool):
        super().__init__(capture)
        self.p = predictor
        self._lean: dict[int, bool] = {}  # id of an attention module -> `lean_attention` of it

    def lean_attention(self, attn) -> bool:
        lean = self._lean.get(id(attn))
        if lean is None:
            lean = self._lean[id(attn)] = lean_attention(attn)
        return lean

    def _approx_inputs(self, layer: int, x: torch.Tensor, partial: torch.Tensor | None):
        """The tensors the layer's approximate output is made of, a function of them -> h [B,S,H], and which of the
        optional ones there are (part of a piece's key)."""
        residual = self.p.residual[layer]  # [B,S,H]
        shared = self.p.seen_shared(layer, x)  # [T,H] or None
        block = self.p.blocks[layer]
        has = (partial is not None, shared is not None)
        inputs = [residual, x] + [t for t in (partial, shared) if t is not None]

        def approx(residual, x, *rest):
            rest = iter(rest)
            part, seen = (next(rest) if present else None for present in has)
            return self.p.approx_hidden(block, residual, x, part, seen)

        return inputs, approx, has

    def gate_scores(self, layer: int, x: torch.Tensor, partial: torch.Tensor | None, target: int) -> torch.Tensor:
        """Scores [T,E] of `target`'s router on this layer's approximate output (no layer in between)."""
        inputs, approx, has = self._approx_inputs(layer, x, partial)
        dec, gate = self.p.layers[target], self.p.blocks[target].gate

        def fn(*args):
            h = approx(*args)
            return self.p.family.scores(gate(dec.post_attention_layernorm(h).flatten(0, 1))[0])

        key = ("gate", layer, target, tuple(inputs[0].shape), has)
        return self._piece(key, fn, inputs)(*inputs)

    def predict_attention(self, layer: int, x: torch.Tensor, partial: torch.Tensor) -> torch.Tensor:
        """Scores [T,E] of the next MoE layer with its attention over the KV cache read but not written."""
        nxt = self.p.next_layer(layer)
        inputs, approx, has = self._approx_inputs(layer, x, partial)
        dec = self.p.layers[nxt]
        attn = dec.self_attn
        # [B,S,head_dim] each, the same tensors for every layer of a step
        cos, sin = (self.shared_input(n, t) for n, t in zip(("cos", "sin"), self.p.kwargs["position_embeddings"]))
        B, S, H = inputs[0].shape

        def pre(cos, sin, *args):
            h = approx(*args)  # [B,S,H]
            return (h, *qkv_rotary(attn, dec.input_layernorm(h), cos, sin))

        def post(h, core):  # h [B,S,H]; core [B,S,heads,d], the attention core's output
            h = h + attn.o_proj(core.reshape(B, S, -1).contiguous())
            return self.p.family.scores(self.p.blocks[nxt].gate(dec.post_attention_layernorm(h).reshape(B * S, H))[0])

        shape = (tuple(inputs[0].shape), has)
        kw = self.p.kwargs
        cache = kw.get("cache", kw.get("past_key_values"))
        static = static_layer(cache, attn.layer_idx)
        if static is not None:  # one piece: the new keys and values go where the layer's own call will put them
            mask = self.shared_input("mask", kw["attention_mask"])
            pos = self.cache_tensor(cache, static.cumulative_length)

            def whole(cos, sin, mask, pos, *args):
                h, q, k, v = pre(cos, sin, *args)
                write_kv(static, pos, k, v)
                return post(h, attention_core(attn, q, static.keys, static.values, mask))

            ins = [cos, sin, mask, pos, *inputs]
            return self._piece(("attn", layer) + shape + (tuple(mask.shape),), whole, ins)(*ins)
        h, q, k, v = self._piece(("pre", layer) + shape, pre, [cos, sin, *inputs])(cos, sin, *inputs)
        core = self._core(attn, q, k, v)
        return self._piece(("post", layer) + shape, post, [h, core])(h, core)

    def _core(self, attn, q, k, v) -> torch.Tensor:
        """The attention core of the new tokens over the cache + themselves, the cache left unchanged:
        q [B,heads,S,d], k/v [B,kv_heads,S,d] -> [B,S,heads,d]."""
        kw = self.p.kwargs
        cache = kw.get("cache", kw.get("past_key_values"))
        if cache is None:
            raise SmoeError("the predictor's attention needs the decode step's KV cache; none was passed")
        k, v = ReadOnlyCache(cache).update(k, v, attn.layer_idx)
        return attention_core(attn, q, k, v, kw.get("attention_mask"))
