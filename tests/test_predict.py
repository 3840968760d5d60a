"""The next-layer predictor that prefetching policies use: when every routed expert of layer i has been
computed before the prediction (all resident), layer i's approximate output is its true output, so the
prediction of layer i+1's router scores (its attention over the read-only KV cache, then its router) must
equal the scores the runtime then sees at layer i+1 - in the prefill and in every decode step, on every family."""
from __future__ import annotations

import pytest
import torch

from smoe.errors import OptionError
from smoe.plan import Action, Plan, PrefetchPlan
from smoe.policy import ExpertPolicy, register_policy
from smoe.runtime import Runtime
from smoe_test_support import FAMILIES, NEW_TOKENS, PROMPTS, collect_logits, stand_in_cuda_graphs


@register_policy("test-predict-probe")
class PredictProbe(ExpertPolicy):
    """Every expert resident; records the predicted and the actual scores of every MoE layer."""

    def setup(self, model, capacity):
        self.predicted: dict = {}  # (step, layer) -> (with attention, without, gate_scores)
        self.actual: dict = {}  # (step, layer) -> scores
        return [(layer, e) for layer in model.moe_layers for e in range(model.num_experts)]

    def plan(self, view):
        self.actual[(view.step, view.layer)] = view.scores.clone()
        return Plan.per_expert(view, {e: Action.HIT for e in view.needed()})

    @property
    def early_prediction(self) -> bool:
        return True

    def prefetch(self, view, ctx):
        if ctx.next_layer is not None:
            got = (ctx.predict(attention=True), ctx.predict(attention=False), ctx.gate_scores([ctx.next_layer])[0],
                   *([ctx.early()] if view.phase == "decode" else []))  # the engine queues it in decode steps only
            # the host's float32 arrays (from_numpy takes nothing else), kept as tensors to compare
            self.predicted[(view.step, ctx.next_layer)] = tuple(torch.from_numpy(p) for p in got)
        return None


@pytest.mark.parametrize("kv_cache,pieces", [("dynamic", None), ("static", False), ("static", True)])
@pytest.mark.parametrize("family", FAMILIES)
def test_prediction_is_exact_when_the_layer_is_fully_computed(family, kv_cache, pieces, tiny):
    """Also over a static KV cache, where the prediction writes the next layer's new keys and values at the position
    that layer then overwrites: op by op (`ReadOnlyCache`) and as one piece."""
    rt = Runtime(tiny(family), "test-predict-probe", device="cpu", cache_experts=1000, batch=len(PROMPTS),
                 kv_cache=kv_cache, predictor_graphs=pieces)
    try:
        rt.generate(PROMPTS, 6)
        pol, layers = rt.policy, rt.info.moe_layers
    finally:
        rt.close()
    expected = {(s, l) for s in range(6) for l in layers[1:]}  # every MoE layer that follows another directly
    assert set(pol.predicted) == expected
    worst_no_attention = 0.0
    for key, (with_attn, without, gate, *early) in pol.predicted.items():
        actual = pol.actual[key]
        assert with_attn.shape == actual.shape
        torch.testing.assert_close(with_attn, actual, atol=2e-5, rtol=1e-4, msg=lambda m: f"{key}: {m}")
        torch.testing.assert_close(gate, without, atol=1e-6, rtol=0)  # the same router on the same state
        worst_no_attention = max(worst_no_attention, float((without - actual).abs().max()))
        assert len(early) == (key[0] > 0)  # decode steps only
    assert worst_no_attention > 1e-3, "skipping the attention should be an approximation"


@pytest.mark.parametrize("family", FAMILIES)
def test_early_prediction_is_the_next_router_on_the_layer_output_without_routed_experts(family, tiny):
    """`NextLayerPredictor.early` (queued before the layer is planned): the next MoE layer's post-attention norm and
    router applied to the layer's true output minus its routed experts' part (residual + shared experts), taken
    here from the model's own tensors by hooks."""
    rt = Runtime(tiny(family), "test-predict-probe", device="cpu", cache_experts=1000, batch=len(PROMPTS))
    engine, layers = rt.engine, rt.info.moe_layers
    decs, blocks = rt.model.model.layers, engine.predictor.blocks
    seen: dict = {}  # (step, layer) -> {name: tensor}

    def keep(layer, name, pre=False):
        def hook(module, args, output=None):
            seen.setdefault((engine.step, layer), {})[name] = (args[0] if pre else output).detach().clone()
        return hook

    for l in layers:
        decs[l].post_attention_layernorm.register_forward_pre_hook(keep(l, "residual", pre=True))
        blocks[l].register_forward_hook(keep(l, "block"))
        blocks[l].experts.register_forward_hook(keep(l, "routed"))
    try:
        rt.generate(PROMPTS, 4)
        predicted = rt.policy.predicted
        checked = 0
        for (step, nxt), (*_, early) in ((k, v) for k, v in predicted.items() if k[0] > 0):
            got = seen[(step, nxt - 1)]
            block_out = got["block"][0] if isinstance(got["block"], tuple) else got["block"]  # [B,S,H]
            H = block_out.shape[-1]
            h = got["residual"] + (block_out.reshape(-1, H) - got["routed"]).view_as(block_out)
            # `.forward`: the hooks above (and the runtime's) stay out of the reference
            logits = blocks[nxt].gate.forward(decs[nxt].post_attention_layernorm.forward(h).reshape(-1, H))[0]
            torch.testing.assert_close(early, rt.ckpt.family.scores(logits), atol=2e-5, rtol=1e-4)
            assert float((early - rt.policy.actual[(step, nxt)]).abs().max()) > 1e-4  # an approximation
            checked += 1
    finally:
        rt.close()
    assert checked == 3 * (len(layers) - 1)


@register_policy("test-early-attention-probe")
class EarlyAttentionProbe(ExpertPolicy):
    """Nothing resident, every routed expert on the CPU; the early prediction with the next layer's attention, and
    the attention predictor's, recorded in each decode step."""

    def setup(self, model, capacity):
        self.pairs: dict = {}  # (step, next layer) -> (early with attention, attention predictor)
        return []

    def plan(self, view):
        return Plan.per_expert(view, {e: Action.CPU for e in view.needed()})

    @property
    def early_prediction(self) -> bool:
        return True

    @property
    def early_attention(self) -> bool:
        return True

    def prefetch(self, view, ctx):
        if view.phase == "decode" and ctx.next_layer is not None:
            self.pairs[(view.step, ctx.next_layer)] = (torch.from_numpy(ctx.early()),
                                                       torch.from_numpy(ctx.predict(attention=True)))
        return None


@pytest.mark.parametrize("kv_cache,pieces", [("dynamic", None), ("static", False)])
@pytest.mark.parametrize("family", FAMILIES)
def test_early_prediction_with_attention_is_the_attention_predictor_without_routed_experts(family, kv_cache, pieces,
                                                                                        tiny):
    """`NextLayerPredictor.early(..., attention=True)`, queued before the layer is planned, computes what the attention
    predictor computes after the layer's resident experts when none is resident (its routed part then zero): the
    next layer's attention and router on residual + shared experts. Op by op and as pieces, over both caches."""
    rt = Runtime(tiny(family), "test-early-attention-probe", device="cpu", cache_experts=4, batch=len(PROMPTS),
                 kv_cache=kv_cache, predictor_graphs=pieces)
    try:
        rt.generate(PROMPTS, 4)
        pairs, layers = rt.policy.pairs, rt.info.moe_layers
    finally:
        rt.close()
    assert set(pairs) == {(s, l) for s in range(1, 4) for l in layers[1:]}
    for key, (early, attention) in pairs.items():
        torch.testing.assert_close(early, attention, atol=1e-6, rtol=0, msg=lambda m: f"{key}: {m}")


def test_prediction_reuses_the_shared_expert_the_block_computed(tiny):
    """A Qwen2-MoE block computes its shared expert before its routed experts; the prediction takes that output
    instead of running the shared expert again (and stays exact: the test above)."""
    rt = Runtime(tiny("qwen2_moe"), "test-predict-probe", device="cpu", cache_experts=1000, batch=len(PROMPTS))
    calls = []
    try:
        blocks = rt.engine.predictor.blocks
        for block in blocks.values():
            block.shared_expert.register_forward_pre_hook(lambda m, a: calls.append(1))
        rt.generate(PROMPTS, 3)
        forwards = 3 * len(blocks)  # every MoE block, every forward pass (prefill + 2 decode steps)
    finally:
        rt.close()
    assert len(calls) == forwards


@register_policy("test-prefetch-all-next")
class PrefetchAllNext(ExpertPolicy):
    """The first MoE layer preloaded, the others empty; routed experts not resident run on the CPU; in each
    decode step every expert of the next MoE layer that is not resident is prefetched. So in the first decode
    step every MoE layer after the first computes only experts prefetched for it, and from the second step on
    every layer computes only experts resident since the step before."""

    def setup(self, model, capacity):
        self.actual: dict = {}  # (step, layer) -> scores
        return [(model.moe_layers[0], e) for e in range(model.num_experts)]

    def plan(self, view):
        self.actual[(view.step, view.layer)] = view.scores.clone()
        resident = view.cache.resident(view.layer)
        return Plan.per_expert(view, {e: Action.HIT if e in resident else Action.CPU for e in view.needed()})

    def prefetch(self, view, ctx):
        nxt = ctx.next_layer
        if view.phase != "decode" or nxt is None:
            return None
        ctx.predict(attention=True)
        resident = view.cache.resident(nxt)
        return PrefetchPlan(loads=[(nxt, e) for e in range(view.model.num_experts) if e not in resident])


@pytest.mark.parametrize("grouped", ["off", "gather"])
@pytest.mark.parametrize("family", ["qwen2_moe", "olmoe"])  # with and without a shared expert
def test_prediction_reads_only_experts_resident_before_this_layers_prefetch(family, grouped, tiny, reference):
    """The prediction made at layer i reads layer i's output from the experts that were resident before the
    previous layer's prefetch only: those prefetched for layer i (their copies may still be landing) are
    computed after it. First decode step: every expert of a layer after the first was prefetched, so the
    routed part is zero; otherwise every expert is long resident, so the prediction is exact. The output is
    HF's either way."""
    rt = Runtime(tiny(family), "test-prefetch-all-next", device="cpu", cache_experts=1000, batch=len(PROMPTS),
                 grouped_experts=grouped)
    seen: dict = {}  # (step, layer) -> (partial [T,H], predicted scores [T,E])
    predictor, engine = rt.engine.predictor, rt.engine
    plain = predictor.predict

    def spy(layer, x, partial, attention):
        out = plain(layer, x, partial, attention)
        seen[(engine.step, predictor.next_layer(layer))] = (partial.clone(), out.clone())
        return out

    predictor.predict = spy
    try:
        res = rt.generate(PROMPTS, NEW_TOKENS)
        actual, layers = rt.policy.actual, rt.info.moe_layers
    finally:
        rt.close()
    assert res.tokens == reference(family).tokens
    follows = [l for l in layers[1:] if l - 1 in layers]  # MoE layers right after another (predicted)
    assert follows and set(seen) == {(s, l) for s in range(1, NEW_TOKENS) for l in follows}
    zero = 0
    for (step, nxt), (partial, predicted) in seen.items():
        if step == 1 and nxt - 1 != layers[0]:  # every routed expert of the predicting layer was prefetched for it
            assert torch.count_nonzero(partial) == 0, (step, nxt)
            zero += 1
        else:  # every routed expert long resident: the layer's output is whole, the prediction exact
            assert torch.count_nonzero(partial) > 0
            torch.testing.assert_close(predicted, actual[(step, nxt)], atol=2e-5, rtol=1e-4)
    assert zero > 0 and res.metrics["decode"]["prefetch_used"] > 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kv_cache", ["dynamic", "static"])
def test_decode_pieces_compute_what_the_module_path_does(family, kv_cache, tiny):
    """The fixed-shape pieces a GPU captures as CUDA graphs (`predict_graphs`), run eagerly here, give the
    predictions of the op-by-op path through the HF modules, bit for bit: with attention (where the family's attention is
    the plain q/k/v/o + rotary kind), without, and a later layer's router. Two prompts of different lengths,
    so the attention core also reads the padding mask. Over a static KV cache the attention is one piece."""
    runs = {}
    for pieces in (False, True):
        rt = Runtime(tiny(family), "test-predict-probe", device="cpu", cache_experts=1000, batch=len(PROMPTS),
                     predictor_graphs=pieces, kv_cache=kv_cache)
        try:
            rt.generate(PROMPTS, 4)
            runs[pieces] = rt.policy.predicted
            if pieces:
                made = {key[0] for key in rt.engine.predictor.pieces.pieces}
                lean = rt.engine.predictor.pieces.lean_attention(rt.model.model.layers[-1].self_attn)
        finally:
            rt.close()
    attention = {"dynamic": {"pre", "post"}, "static": {"attn"}}[kv_cache]
    assert made == ({"gate"} | attention if lean else {"gate"}), made  # the pieces served the decode steps
    assert runs[True].keys() == runs[False].keys()
    for key, ours in runs[True].items():
        assert all(torch.equal(a, b) for a, b in zip(ours, runs[False][key])), key  # the same ops, in order


@pytest.mark.parametrize("family", FAMILIES)
def test_skeleton_pieces_decode_what_the_module_path_decodes(family, tiny):
    """The decoder layers' pieces a GPU captures as CUDA graphs (`skeleton_graphs`), run eagerly here: the
    attention alone, and the attention with the rest of the layer but the routed experts (`block_graphs`). Every
    forward's logits equal the module path's bit for bit, with SMoE planning, prefetching and substituting on top
    (its hooks on the router, the residual and the shared expert still fire). Layers of a kind the pieces do not
    know keep their own forward; Qwen2-MoE and Mixtral are served."""
    runs, served = {}, {}
    modes = {"modules": dict(skeleton_graphs=False), "attention": dict(skeleton_graphs=True, block_graphs=False),
             "layer": dict(skeleton_graphs=True),
             "static-modules": dict(skeleton_graphs=False, kv_cache="static"),
             "static-layer": dict(skeleton_graphs=True, kv_cache="static")}
    for mode, options in modes.items():
        rt = Runtime(tiny(family), "smoe", device="cpu", cache_experts=10, batch=len(PROMPTS), predictor_graphs=True,
                     **options)
        logits, _, cb = collect_logits()
        try:
            res = rt.generate(PROMPTS, 6, on_logits=cb)
            runs[mode] = (logits, res.tokens, res.metrics["substitutions"], res.metrics["prefetches"])
            if rt.skeleton:
                served[mode] = {key[:2] for key in rt.skeleton.pieces}
                installed = rt.skeleton.installed
                assert rt.environment()["block_graphs"] == (len(installed) if mode.endswith("layer") else 0)
        finally:
            rt.close()
    assert (len(installed) > 0) == (family in ("qwen2_moe", "mixtral")), (family, installed)
    assert served["attention"] == {(kind, i) for kind in ("pre", "post") for i in installed}  # the decode steps used them
    block = {"qwen2_moe": ("norm", "gate", "shared_expert", "mix", "residual"),
             "mixtral": ("norm", "gate", "residual")}.get(family, ())
    assert served["layer"] == {(kind, i) for kind in ("pre", "post") + block for i in installed}
    # over a static KV cache: the whole attention is one piece, the same ops as the module path over that cache
    assert served["static-layer"] == {(kind, i) for kind in ("attn",) + block for i in installed}
    for mode, base in (("attention", "modules"), ("layer", "modules"), ("static-layer", "static-modules")):
        ours, theirs = runs[mode], runs[base]
        assert len(ours[0]) == len(theirs[0]) == 6
        assert all(torch.equal(a, b) for a, b in zip(ours[0], theirs[0])), mode
        assert ours[1:] == theirs[1:], mode
    # a static cache against the growing one: the attention runs over the whole buffer under a mask, so the float
    # sums may differ in the last bits; the tokens and every decision are the same here
    static, dynamic = runs["static-modules"], runs["modules"]
    assert all(torch.allclose(a, b, atol=1e-5, rtol=0) for a, b in zip(static[0], dynamic[0]))
    assert static[1:] == dynamic[1:]


def test_static_cache_serves_calls_that_fit_and_its_pieces_follow_a_new_one(tiny):
    """A static KV cache serves the next generate call again, reset, where it fits (the same batch, enough
    positions), so the attention pieces made over its buffers serve again; a call that does not fit gets a new
    cache, and the pieces made over the old one are dropped (they write into buffers no longer in use). Every call
    decodes as the module path over its cache does, bit for bit."""
    calls = [PROMPTS, [[3, 4], [20, 21, 22, 23]], [[7, 8, 9]]]  # the third: batch 1, a new cache
    runs = {}
    for pieces in (False, True):
        rt = Runtime(tiny("qwen2_moe"), "smoe", device="cpu", cache_experts=10, batch=2, kv_cache="static",
                     skeleton_graphs=pieces, predictor_graphs=pieces)
        logits, _, cb = collect_logits()
        try:
            tokens, caches, made = [], [], []
            for p in calls:
                tokens.append(rt.generate(p, 4, on_logits=cb).tokens)
                caches.append(rt._static[2])
                if pieces:
                    made.append({k: v for k, v in rt.skeleton.pieces.items() if k[0] == "attn"})
                    assert rt.skeleton._cache is rt.engine.predictor.pieces._cache is caches[-1]
                    assert {k[0] for k in rt.engine.predictor.pieces.pieces} <= {"attn", "gate"}
            runs[pieces] = (logits, tokens)
            assert caches[0] is caches[1] and caches[2] is not caches[1]
            if pieces:
                assert len(made[0]) == len(rt.skeleton.installed) > 0
                assert made[1] == made[0]  # the same piece objects: made over the same buffers
                assert not set(made[2].values()) & set(made[1].values())  # the old cache's pieces dropped
        finally:
            rt.close()
    assert len(runs[True][0]) == len(runs[False][0]) == 3 * 4
    assert all(torch.equal(a, b) for a, b in zip(runs[True][0], runs[False][0]))
    assert runs[True][1] == runs[False][1]


def test_static_cache_size_rounds_up_within_the_memory_plans_reserve(tiny):
    """Positions rounded up to a step of 256, so calls of similar length share a cache, but not past the KV tokens
    the memory plan reserved for the batch, unless the call itself needs more."""
    rt = Runtime(tiny("qwen2_moe"), "lru", device="cpu", cache_experts=10, batch=2, kv_cache="static", kv_tokens=1000)
    try:
        sizes = [(rt._static_cache(b, n), rt._static[1])[1] for b, n in ((2, 10), (2, 300), (2, 600), (1, 300))]
    finally:
        rt.close()
    assert sizes == [256, 500, 600, 512]


def test_kv_cache_option_names_the_accepted_values(tiny):
    with pytest.raises(OptionError, match="kv_cache='paged'; accepted: dynamic, static"):
        Runtime(tiny("qwen2_moe"), "lru", device="cpu", cache_experts=10, kv_cache="paged")


def test_block_graphs_need_the_skeleton_graphs(tiny):
    """The block's pieces run inside the skeleton's decode call: asking for them without it names both options."""
    with pytest.raises(OptionError, match="block_graphs=True.*skeleton_graphs is off"):
        Runtime(tiny("qwen2_moe"), "lru", device="cpu", cache_experts=10, skeleton_graphs=False, block_graphs=True)


def test_a_closed_runtime_with_skeleton_pieces_frees_its_model(tiny):
    """The pieces hold the layers they run (and through the MoE blocks the engine and its slots): `close` gives
    the layers their own forward back and drops the pieces, so the model is freed at close, not when the
    runtime object goes (on a GPU the next run's slots would not fit beside it)."""
    import gc
    import weakref

    rt = Runtime(tiny("qwen2_moe"), "lru", device="cpu", cache_experts=10, skeleton_graphs=True)
    rt.generate(PROMPTS[:1], 3)
    assert rt.skeleton.pieces and rt.skeleton.installed
    layer = weakref.ref(rt.model.model.layers[0])
    rt.close()
    gc.collect()
    assert layer() is None


def test_captured_pieces_read_another_pieces_output_in_place(monkeypatch):
    """The bookkeeping of captured pieces (`predict_graphs.Piece`), with the CUDA graph API stood in for (this
    machine has no GPU; the graphs themselves are checked on the H200 by benchmarks/skeleton_graphs.py): an input
    from outside is cloned into a static input and copied in on every call; an input that is another captured
    piece's output is read where it lies, with no copy, unless a call passes another tensor; a shared input is one
    buffer for all pieces, copied once per new tensor."""
    import smoe.predict_graphs as pg

    stand_in_cuda_graphs(monkeypatch)  # a replay changes nothing: only what is copied where is under test
    copies = []
    own_copy = torch.Tensor.copy_
    monkeypatch.setattr(torch.Tensor, "copy_",
                        lambda dst, src, *a, **kw: copies.append(dst) or own_copy(dst, src, *a, **kw))

    pieces = pg.Pieces(capture=True)
    x = torch.arange(4.0)
    first = pieces._piece(("first",), lambda t: t * 2, [x])
    assert first.inputs[0] is not x and torch.equal(first.inputs[0], x)  # cloned
    out = first(x)  # [0, 2, 4, 6], computed at capture
    assert len(copies) == 1 and copies[0] is first.inputs[0]  # an outside input is copied in
    second = pieces._piece(("second",), lambda t: t + 1, [out])
    assert second.inputs[0] is out  # another piece's output: read in place
    copies.clear()
    second(out)
    assert copies == []  # ... with no copy
    other = torch.full((4,), 9.0)
    second(other)
    assert len(copies) == 1 and torch.equal(out, other)  # another tensor is copied to where the replay reads
    # a shared input (a step's rotary cos/sin): one buffer, read in place by every piece, copied once per new tensor
    cos = torch.linspace(0, 1, 4)
    buf = pieces.shared_input("cos", cos)
    assert buf is not cos and torch.equal(buf, cos)
    third = pieces._piece(("third",), lambda t: t - 1, [buf])
    fourth = pieces._piece(("fourth",), lambda t: t * 3, [pieces.shared_input("cos", cos)])
    assert third.inputs[0] is buf and fourth.inputs[0] is buf  # read where it lies
    copies.clear()
    for piece in (third, fourth):  # the same tensor again (the next layer of a step): no copy
        piece(pieces.shared_input("cos", cos))
    assert copies == []
    step2 = torch.linspace(1, 2, 4)  # the next step's tensor: copied once, then found there
    for piece in (third, fourth):
        piece(pieces.shared_input("cos", step2))
    assert copies == [buf] and torch.equal(buf, step2)
    step2.mul_(2)  # changed in place: copied again
    assert pieces.shared_input("cos", step2) is buf and copies == [buf, buf] and torch.equal(buf, step2)
    assert pieces.shared_input("cos", torch.ones(2)) is not buf  # another shape: another buffer
    assert pg.Pieces(capture=False).shared_input("cos", cos) is cos  # without capture: the tensor itself
    # a static cache's counter: read in place by the pieces made over that cache; a new cache drops them
    old, new = object(), object()
    counter = torch.zeros((), dtype=torch.long)
    attn = pieces._piece(("attn", 0), lambda t: t + 1, [pieces.cache_tensor(old, counter)])
    assert attn.inputs[0] is counter and counter.data_ptr() in pieces.output_ptrs
    assert pieces.cache_tensor(old, counter) is counter and ("attn", 0) in pieces.pieces  # the same cache: kept
    fresh = torch.zeros((), dtype=torch.long)
    pieces.cache_tensor(new, fresh)
    assert ("attn", 0) not in pieces.pieces and ("third",) in pieces.pieces  # only the old cache's pieces go
    assert counter.data_ptr() not in pieces.output_ptrs and fresh.data_ptr() in pieces.output_ptrs
