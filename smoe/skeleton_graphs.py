"""The decoder layers' attention at decode as CUDA graphs: two replays per layer instead of ~25 launches.

Where it sits: the runtime calls `install` on a GPU (`Runtime(skeleton_graphs=...)`). A decode step at batch 1
is bound by the host's launch work: the all-GPU floor of the Qwen2-57B shape took 65-135 ms per token on the
H200 for a few ms of GPU work (README, fifth campaign). For each decoder layer of a known pre-norm kind
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
a replay, outputs read before the layer's next replay. With `capture=False` the same pieces run eagerly (on a
CPU, where the tests compare them with the module path bit for bit). Capture time is counted in `capture_s`.
"""
from __future__ import annotations

from torch import nn

from .predict_graphs import Pieces, attention_core, lean_attention, qkv_rotary

# decoder layers whose forward is: residual + attn(input_norm(x)), then residual + mlp(post_attention_norm(h))
LAYERS = ("Qwen2MoeDecoderLayer", "MixtralDecoderLayer")


class SkeletonGraphs(Pieces):
    def __init__(self, layers: nn.ModuleList, capture: bool):
        super().__init__(capture)
        self.installed = [i for i, layer in enumerate(layers) if self._fits(layer)]
        for i in self.installed:
            layer = layers[i]
            layer.forward = self._forward(i, layer, layer.forward)

    def release(self, layers: nn.ModuleList) -> None:
        """Give the layers their own forward back and drop the pieces (and the graphs' memory): what holds the
        pieces holds the model, so `Runtime.close` calls this before freeing it."""
        for i in self.installed:
            layers[i].__dict__.pop("forward", None)
        self.pieces.clear()

    @staticmethod
    def _fits(layer: nn.Module) -> bool:
        return type(layer).__name__ in LAYERS and lean_attention(layer.self_attn)

    def _forward(self, i: int, layer: nn.Module, own):
        attn = layer.self_attn

        def pre(x, cos, sin):  # x [B,S,H]; cos/sin [B or 1,S,d] -> q [B,heads,S,d], k/v [B,kv_heads,S,d]
            return qkv_rotary(attn, layer.input_layernorm(x), cos, sin)

        def post(x, core):  # x [B,S,H] the layer's input; core [B,S,heads,d] -> h [B,S,H]
            return x + attn.o_proj(core.reshape(*x.shape[:-1], -1).contiguous())

        def forward(hidden_states, *args, **kwargs):
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            rope = kwargs.get("position_embeddings")
            if args or hidden_states.shape[1] != 1 or cache is None or rope is None:
                return own(hidden_states, *args, **kwargs)
            rest = {k: v for k, v in kwargs.items()
                    if k not in ("cache", "past_key_values", "position_embeddings", "attention_mask")}
            cos, sin = rope
            shapes = (tuple(hidden_states.shape), tuple(cos.shape))
            q, k, v = self._piece(("pre", i) + shapes, pre, [hidden_states, cos, sin])(hidden_states, cos, sin)
            k, v = cache.update(k, v, attn.layer_idx, kwargs=rest)
            core = attention_core(attn, q, k, v, kwargs.get("attention_mask"), **rest)
            h = self._piece(("post", i) + shapes, post, [hidden_states, core])(hidden_states, core)
            return h + layer.mlp(layer.post_attention_layernorm(h))

        return forward
