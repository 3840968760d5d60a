"""smolmoe: the registered architecture, MoEfication, the healing student and assembly, on a tiny dense Llama."""
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from smoe.smolmoe.assemble import assemble, load_recipe, moe_state_dict, save_recipe
from smoe.smolmoe.heal import HealConfig, make_student, recipe_tensors, train
from smoe.smolmoe.moefy import Topology, balanced_kmeans, collect_ffn_io, init_router, neuron_order
from smoe.errors import SmoeError
from smoe.tiny import byte_tokenizer

TOPO = Topology(num_experts=4, top_k=2, shared=8)  # 48 neurons: 8 shared + 4 experts of 10


@pytest.fixture(scope="module")
def dense():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=260, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=256, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def healed(dense):
    ids = torch.randint(0, 260, (4, 64), generator=torch.Generator().manual_seed(1))
    xs, hs = collect_ffn_io(dense, ids)
    orders = [neuron_order(h, TOPO) for h in hs]
    routers = [init_router(x, h, o, TOPO) for x, h, o in zip(xs, hs, orders)]
    cfg = HealConfig(topology=TOPO, steps=3, batch=2, seq=32, rank_ffn=4, rank_attn=2)
    student = make_student(dense, orders, routers, cfg)
    data = torch.randint(0, 260, (8, 32), generator=torch.Generator().manual_seed(2))
    log, finished = train(student, dense, data, cfg, "cpu", progress=False)
    assert finished
    return student, log, orders


def test_balanced_kmeans_gives_equal_clusters_that_follow_structure():
    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 5
    points = torch.cat([centres[c] + torch.randn(6, 16) * 0.1 for c in range(4)])  # 4 clean groups of 6
    assign = balanced_kmeans(points, 4)
    assert torch.bincount(assign, minlength=4).tolist() == [6, 6, 6, 6]
    for c in range(4):  # each true group lands in one cluster
        assert len(set(assign[c * 6:(c + 1) * 6].tolist())) == 1


def test_neuron_order_is_a_permutation_with_most_active_neurons_shared(dense):
    ids = torch.randint(0, 260, (2, 64), generator=torch.Generator().manual_seed(3))
    _, hs = collect_ffn_io(dense, ids)
    h = hs[0]
    h[:, 5] *= 100.0  # neuron 5 is always the most active: it must be shared
    order = neuron_order(h, TOPO)
    assert sorted(order.tolist()) == list(range(48))
    assert 5 in order[:TOPO.shared].tolist()


def test_topology_rejects_an_uneven_split():
    with pytest.raises(SmoeError, match="does not split"):
        Topology(num_experts=6, top_k=2, shared=8).expert_size(48)


def test_healing_trains_and_lowers_the_distillation_loss(healed):
    student, log, _ = healed
    assert [r["step"] for r in log] == [0, 2]
    assert all(torch.isfinite(torch.tensor(r["kl"])) for r in log)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in student.named_parameters() if "router" in n)


def test_assembled_checkpoint_computes_what_the_student_computes(healed, dense, tmp_path):
    student, _, _ = healed
    recipe = recipe_tensors(student)
    save_recipe(tmp_path / "r.safetensors", recipe, TOPO, {"note": "test"})
    recipe2, topo2, info = load_recipe(tmp_path / "r.safetensors")
    assert topo2 == TOPO and info == {"note": "test"}
    out = assemble(dense, byte_tokenizer(), recipe2, TOPO, tmp_path / "moe")
    moe = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(moe).__name__ == "SmolMoeForCausalLM"
    ids = torch.randint(0, 260, (2, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, student(ids).logits, rtol=1e-4, atol=1e-4)


def test_experts_are_exact_slices_of_the_corrected_dense_ffn(healed, dense):
    student, _, orders = healed
    recipe = recipe_tensors(student)
    sd = moe_state_dict(dense, recipe, TOPO)
    for i in range(2):
        p = f"model.layers.{i}.mlp"
        w = dense.model.layers[i].mlp.up_proj.weight.float()
        fixed = w + recipe[f"{p}.up_proj.lora_B"].float() @ recipe[f"{p}.up_proj.lora_A"].float()
        rows = orders[i][TOPO.shared + 10:TOPO.shared + 20]  # expert 1's neurons
        assert torch.equal(sd[f"{p}.experts.1.up_proj.weight"], fixed[rows])
        assert torch.equal(sd[f"{p}.shared_expert.up_proj.weight"], fixed[orders[i][:TOPO.shared]])


def test_with_a_uniform_router_and_every_expert_chosen_the_moe_is_the_corrected_dense_model(healed, dense, tmp_path):
    student, _, _ = healed
    recipe = recipe_tensors(student)
    for k in recipe:
        if k.endswith("mlp.gate.weight"):
            recipe[k] = torch.zeros_like(recipe[k])  # uniform probabilities: every weight is 1/E * E = 1
    every = Topology(num_experts=4, top_k=4, shared=8)
    moe = AutoModelForCausalLM.from_pretrained(assemble(dense, byte_tokenizer(), recipe, every, tmp_path / "all"))
    fixed = LlamaForCausalLM(dense.config).eval()
    state = dense.state_dict()
    for name, _ in fixed.named_parameters():
        if name.endswith("_proj.weight"):
            key = name[: -len(".weight")]
            state[name] = state[name] + recipe[f"{key}.lora_B"].float() @ recipe[f"{key}.lora_A"].float()
    fixed.load_state_dict(state)
    ids = torch.randint(0, 260, (1, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, fixed(ids).logits, rtol=1e-4, atol=1e-4)


def test_a_recipe_runs_at_another_top_k_and_a_bad_one_is_refused():
    assert TOPO.with_top_k(3) == Topology(num_experts=4, top_k=3, shared=8)
    assert TOPO.with_top_k(4).name == "e4k4s8"
    for bad in (0, 5):
        with pytest.raises(SmoeError, match=f"top-k {bad} for e4k2s8: accepted 1..4"):
            TOPO.with_top_k(bad)


def test_the_committed_recipe_holds_every_layer_at_the_default_topology():
    """The committed recipe is one healing run's output: e64k32s384 (the smallest topology that meets the quality
    bar, README), and per layer of SmolLM2-135M (30) the neuron order of all 1,536 FFN neurons and a router over
    its experts."""
    from smoe.smolmoe.assemble import DEFAULT_RECIPE

    topology = Topology(num_experts=64, top_k=32, shared=384)
    tensors, topo, info = load_recipe(DEFAULT_RECIPE)
    assert topo == topology and info["steps"] == 760 and info["batch"] == 64
    orders = sorted(k for k in tensors if k.endswith("mlp.order"))
    assert len(orders) == 30
    for k in orders:
        assert sorted(tensors[k].tolist()) == list(range(1536)), k
        assert tensors[k.replace("order", "gate.weight")].shape == (topology.num_experts, 576)


def test_topology_names_parse_and_a_bad_one_is_refused():
    from smoe.smolmoe.heal import parse_topology

    assert parse_topology("e64k16s384") == Topology(num_experts=64, top_k=16, shared=384)
    with pytest.raises(SmoeError, match="e<experts>k<top-k>s<shared"):
        parse_topology("64x16")


def test_healing_split_over_calls_ends_where_one_uninterrupted_run_ends(dense, tmp_path):
    ids = torch.randint(0, 260, (4, 64), generator=torch.Generator().manual_seed(1))
    xs, hs = collect_ffn_io(dense, ids)
    orders = [neuron_order(h, TOPO) for h in hs]
    routers = [init_router(x, h, o, TOPO) for x, h, o in zip(xs, hs, orders)]
    cfg = HealConfig(topology=TOPO, steps=4, batch=2, seq=32, rank_ffn=4, rank_attn=2)
    data = torch.randint(0, 260, (8, 32), generator=torch.Generator().manual_seed(2))
    whole = make_student(dense, orders, routers, cfg)
    log_whole, _ = train(whole, dense, data, cfg, "cpu", progress=False)
    state = tmp_path / "state.pt"
    calls = 0
    while True:  # a time limit of 0 s: every call trains one step, saves and stops
        calls += 1
        split = make_student(dense, orders, routers, cfg)
        log_split, finished = train(split, dense, data, cfg, "cpu", progress=False, state=state, stop_after_s=0.0)
        if finished:
            break
    assert calls == 4
    for (n, a), b in zip(whole.named_parameters(), split.parameters()):
        assert torch.equal(a, b), n
    assert [r["kl"] for r in log_split] == [r["kl"] for r in log_whole]
    state.unlink()
    other = HealConfig(topology=TOPO, steps=5, batch=2, seq=32, rank_ffn=4, rank_attn=2)
    train(make_student(dense, orders, routers, other), dense, data, other, "cpu", progress=False, state=state,
          stop_after_s=0.0)  # step 1 of 5 saved
    with pytest.raises(SmoeError, match="another configuration"):
        train(make_student(dense, orders, routers, cfg), dense, data, cfg, "cpu", progress=False, state=state)


def test_teacher_samples_chat_answers_and_plain_continuations(dense):
    from smoe.smolmoe.heal import INSTRUCTIONS, OPENERS, TOPICS, sample_prompts, teacher_generations

    tok = byte_tokenizer()
    tok.chat_template = "{% for m in messages %}<user>{{ m['content'] }}{% endfor %}<bot>"
    prompts = sample_prompts(1, 2, tok)
    n_chat, n_plain = len(INSTRUCTIONS) * len(TOPICS), len(OPENERS) * len(TOPICS)
    assert len(prompts) == n_chat + 2 * n_plain
    assert all(p.startswith("<user>") and p.endswith("<bot>") for p in prompts[:n_chat])
    assert not any("<user>" in p for p in prompts[n_chat:])
    assert prompts[n_chat] == OPENERS[0].format("The ocean")  # topics capitalised at the start of a text
    assert "Here is a short article about the ocean.\n\n" in prompts  # and not inside a sentence
    dense.generation_config.pad_token_id = tok.pad_token_id
    stream = teacher_generations(dense, tok, "cpu", per_prompt=0, plain_per_prompt=1, new_tokens=2, batch=512)
    eos = (stream == tok.eos_token_id).nonzero().flatten()
    assert len(eos) == n_plain and eos[-1] == len(stream) - 1  # one EOS-terminated sample per prompt
    assert teacher_generations(dense, tok, "cpu", per_prompt=0, plain_per_prompt=0).numel() == 0
