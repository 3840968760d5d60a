"""The decoder layers' attention at decode as CUDA graphs: two replays per layer instead of ~25 launches.

Where it sits: the runtime calls `install` on a GPU (`Runtime(skeleton_graphs=...)`). A decode step at batch 1
is bound by the host's launch work: the all-GPU floor of the Qwen2-57B shape took 65-135 ms per token on the
H200 for a few ms of GPU work (docs/h200-campaigns.md, fifth campaign). For each decoder layer of a known pre-norm kind
(`LAYERS`) whose attention is the plain q/k/v/o + rotary kind (`PredictorPieces.lean_attention`), the layer's
`forward` is replaced, for decode calls only (one new token per sequence), by:
  - `pre`, a graph: input norm -> q/k/v projections -> rotary;
  - the KV-cache update and the attention core, eagerly, through the model's own cache and attention
    function (the cache grows every step);
  - `post`, a graph: o_proj -> residual;
  - then, as in the HF layer, the post-attention norm and the MoE block, called as modules: their hooks (the
    router-logit capture, routing replay, the predictor's residual and shared-expert taps) fire as before.
Prefill, and any call the wrapper does not recognise, runs the layer's own forward. The pieces are the
predictor's (`predict_graphs.Piece`): captured on first use per (layer, shapes), static inputs copied in before
a replay (the rotary cos/sin, the same for every layer of a step, once per step: `Pieces.shared_input`), outputs
read before the layer's next replay. With `capture=False` the same pieces run eagerly (on a
CPU, where the tests compare them with the module path bit for bit). Capture time is counted in `capture_s`.

With `block` on (`Runtime(block_graphs=...)`), the rest of such a layer's decode call runs as pieces too, module
by module, so every hook on a module still fires around it (the predictor's residual tap on the post-attention
norm, the routing replay and the logit capture on the router, the predictor's shared-expert tap):
  - the post-attention norm, the MoE block's router and its shared expert(s) each replay a graph in place of
    their own forward (a dense MLP layer's MLP likewise);
  - the routed experts run through the engine as before (the plan needs the host);
  - the block's mix (Qwen2-MoE's gated shared expert added to the routed output: `router_first`) and the layer's
    residual add are pieces too.
A piece fed by another's output reads it where it lies (`predict_graphs.Piece`), so the chain adds no copies
between its replays. The modules use their pieces only inside this wrapper's decode call of their own layer, never
while a graph is being captured (the predictor's pieces call routers and norms of other layers inside their
capture), so prefill and the predictor see the modules' own forward.
"""
from __future__ import annotations

import torch
from torch import nn

from .metrics import span
from .predict import static_layer, write_kv
from .predict_graphs import Pieces, attention_core, lean_attention, qkv_rotary

# decoder layers whose forward is: residual + attn(input_norm(x)), then residual + mlp(post_attention_norm(h))
LAYERS = ("Qwen2MoeDecoderLayer", "MixtralDecoderLayer")


class SkeletonGraphs(Pieces):
    def __init__(self, layers: nn.ModuleList, capture: bool, block: bool = False):
        super().__init__(capture)
        self.block = block
        self.active: int | None = None  # the layer whose decode call is running (its modules replay pieces)
        self.installed = [i for i, layer in enumerate(layers) if self._fits(layer)]
        for i in self.installed:
            layer = layers[i]
            layer.forward = self._forward(i, layer, layer.forward)
            if block:
                for name, module in self._block_modules(layer):
                    module.forward = self._module_forward(i, name, module.forward)

    def release(self, layers: nn.ModuleList) -> None:
        """Give the layers and their modules their own forward back and drop the pieces (and the graphs' memory):
        what holds the pieces holds the model, so `Runtime.close` calls this before freeing it."""
        for i in self.installed:
            layers[i].__dict__.pop("forward", None)
            if self.block:
                for _, module in self._block_modules(layers[i]):
                    module.__dict__.pop("forward", None)
        self.pieces.clear()
        self._held.clear()
        self._cache, self._cache_ptrs = None, set()
        self.output_ptrs = frozenset()

    @staticmethod
    def _fits(layer: nn.Module) -> bool:
        return type(layer).__name__ in LAYERS and lean_attention(layer.self_attn)

    @staticmethod
    def _block_modules(layer: nn.Module) -> list[tuple[str, nn.Module]]:
        """The modules of a layer's feed-forward half that replay pieces with `block` on: the post-attention norm,
        then an MoE block's router and shared expert(s), or a dense layer's whole MLP."""
        mlp = layer.mlp
        out = [("norm", layer.post_attention_layernorm)]
        if not (hasattr(mlp, "gate") and hasattr(mlp, "experts")):
            return out + [("mlp", mlp)]
        return out + [(name, getattr(mlp, name)) for name in ("gate", "shared_expert", "shared_experts")
                      if isinstance(getattr(mlp, name, None), nn.Module)]

    def run(self, i: int, name: str, fn, inputs: list[torch.Tensor]):
        """fn(*inputs) as the piece (name, layer i, input shapes) inside layer i's decode call (not while a graph is
        being captured), else as is."""
        if self.active != i or (self.capture and torch.cuda.is_current_stream_capturing()):
            return fn(*inputs)
        return self._piece((name, i, *(tuple(t.shape) for t in inputs)), fn, inputs)(*inputs)

    def _module_forward(self, i: int, name: str, own):
        def forward(*args, **kwargs):
            if kwargs:
                return own(*args, **kwargs)
            return self.run(i, name, own, list(args))

        return forward

    def _forward(self, i: int, layer: nn.Module, own):
        attn = layer.self_attn

        def pre(x, cos, sin):  # x [B,S,H]; cos/sin [B or 1,S,d] -> q [B,heads,S,d], k/v [B,kv_heads,S,d]
            return qkv_rotary(attn, layer.input_layernorm(x), cos, sin)

        def post(x, core):  # x [B,S,H] the layer's input; core [B,S,heads,d] -> h [B,S,H]
            return x + attn.o_proj(core.reshape(*x.shape[:-1], -1).contiguous())

        def residual(h, out):  # h [B,S,H], the feed-forward half's output out [B,S,H] -> the layer's output
            return h + out

        def attend(static):  # one piece for the whole attention over a static cache, written at its position
            def fn(x, cos, sin, mask, pos):  # x [B,1,H]; mask [B,1,1,max_len] bool; pos 0-dim -> h [B,1,H]
                q, k, v = pre(x, cos, sin)
                write_kv(static, pos, k, v)
                return post(x, attention_core(attn, q, static.keys, static.values, mask))

            return fn

        def forward(hidden_states, *args, **kwargs):
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            rope = kwargs.get("position_embeddings")
            if args or hidden_states.shape[1] != 1 or cache is None or rope is None:
                return own(hidden_states, *args, **kwargs)
            rest = {k: v for k, v in kwargs.items()
                    if k not in ("cache", "past_key_values", "position_embeddings", "attention_mask")}
            cos, sin = self.shared_input("cos", rope[0]), self.shared_input("sin", rope[1])
            shapes = (tuple(hidden_states.shape), tuple(cos.shape))
            static = static_layer(cache, attn.layer_idx)
            with span("smoe.attention"):
                if static is not None:
                    assert kwargs.get("attention_mask") is not None, "a static cache's decode step has a mask"
                    mask = self.shared_input("mask", kwargs["attention_mask"])
                    pos = self.cache_tensor(cache, static.cumulative_length)
                    inputs = [hidden_states, cos, sin, mask, pos]
                    h = self._piece(("attn", i) + shapes + (tuple(mask.shape),), attend(static), inputs)(*inputs)
                    static.cumulative_length.add_(1)  # what `update` counts; outside the piece, which may run twice
                else:
                    q, k, v = self._piece(("pre", i) + shapes, pre, [hidden_states, cos, sin])(hidden_states, cos, sin)
                    k, v = cache.update(k, v, attn.layer_idx, kwargs=rest)
                    core = attention_core(attn, q, k, v, kwargs.get("attention_mask"), **rest)
                    h = self._piece(("post", i) + shapes, post, [hidden_states, core])(hidden_states, core)
            if not self.block:
                return h + layer.mlp(layer.post_attention_layernorm(h))
            self.active = i
            try:
                return self.run(i, "residual", residual, [h, layer.mlp(layer.post_attention_layernorm(h))])
            finally:
                self.active = None

        return forward
