"""Paper shapes with random weights (smoe.shapes) and routing replay (smoe.replay), on the CPU."""
import csv
import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from smoe.errors import CheckpointError, SmoeError
from smoe.predict import PrefetchContext, early_key, key_distance, prediction_key
from smoe.replay import RoutingReplay
from smoe.runtime import Runtime
from smoe.shapes import SHAPES, RandomSource, shape_config
from smoe.tiny import make_tiny
from smoe.trace_stats import prefetch_accuracy
from smoe_test_support import record_replay_traces

ROOT = Path(__file__).resolve().parents[1]
TOY = dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=16, shared_expert_intermediate_size=32,
           vocab_size=300, num_attention_heads=4, num_key_value_heads=2)


def test_shapes_have_the_papers_sizes():
    ds, xv, qw = (shape_config(n) for n in ("deepseek-moe-16b-shape", "xverse-moe-a4.2b-shape", "qwen2-57b-a14b-shape"))
    assert (ds.hidden_size, ds.moe_intermediate_size, ds.num_experts_per_tok, ds.mlp_only_layers) == (2048, 1408, 6, [0])
    assert (xv.hidden_size, xv.moe_intermediate_size, xv.num_experts_per_tok) == (2560, 1728, 6)
    assert (qw.hidden_size, qw.moe_intermediate_size, qw.num_experts_per_tok, qw.shared_expert_intermediate_size,
            qw.num_key_value_heads) == (3584, 2560, 8, 20480, 4)
    assert {c.num_hidden_layers for c in (ds, xv, qw)} == {28} and {c.num_experts for c in (ds, xv, qw)} == {64}
    with pytest.raises(CheckpointError, match="accepted: " + ", ".join(SHAPES)):
        shape_config("mixtral-shape")


def test_random_source_is_seeded_per_tensor_and_loads_like_a_checkpoint():
    a = RandomSource.named("qwen2-57b-a14b-shape", num_hidden_layers=2, **TOY)
    b = RandomSource.named("qwen2-57b-a14b-shape", num_hidden_layers=2, **TOY)
    key = "model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(a.read(key), b.read(key)) and not torch.equal(a.read(key), a.read(key.replace("q_", "k_")))
    assert a.read(key).dtype == torch.bfloat16 and 0.015 < a.read(key).float().std() < 0.025
    assert torch.equal(a.read("model.norm.weight"), torch.ones(64, dtype=torch.bfloat16))
    assert not any(".experts." in k for k in a.skeleton_keys())
    rt = Runtime(a, "lru", cache_experts=16)
    w = rt.store.expert(1, 3)  # [3*I*H] gate, up, down
    out = torch.empty_like(w)
    b.read_expert(1, 3, out, rt.store.shape)
    assert torch.equal(w, out) and w.float().std() > 0.01
    assert len(rt.generate([[1, 2, 3]], max_new_tokens=3).tokens[0]) == 3
    rt.close()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A 4-layer tiny Qwen2-MoE run's trace, with the predictor's recorded predictions."""
    ckpt = make_tiny("qwen2_moe", tmp_path_factory.mktemp("q") / "q", num_hidden_layers=4)
    rt = Runtime(ckpt, "lru", cache_experts=32, batch=2, trace=True, trace_predictions=True)
    rt.generate([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], max_new_tokens=4)
    rt.generate([[1, 2, 3], [4, 5, 6]], max_new_tokens=3, accumulate=True)
    records = rt.engine.trace
    rt.close()
    return records


def test_a_trace_records_the_predictors_view_of_later_layers(recorded):
    decode = [r for r in recorded if r["phase"] == "decode"]
    assert set(decode[0]["predicted"]) == {"attn1", "early1", "earlyattn1", "noattn1", "noattn2", "noattn3"}  # layer 0 of 4
    assert set(decode[3]["predicted"]) == set()  # the last MoE layer predicts nothing
    assert decode[0]["predicted"]["attn1"].shape == decode[0]["scores"].shape
    assert all(r["predicted"] is None for r in recorded if r["phase"] == "prefill")


def test_timed_runs_do_not_pay_for_predictions(tiny):
    rt = Runtime(tiny("qwen2_moe"), "lru", cache_experts=32, trace=True)  # trace_predictions off
    rt.generate([[1, 2, 3]], max_new_tokens=3)
    assert rt.engine.trace and all(r["predicted"] is None for r in rt.engine.trace)
    rt.close()


def replayed_run(recorded, policy: str, layers: int = 3, before=None, oracle: bool = False, known: bool = False,
                 **params):
    """`policy` (with `params`) on a toy Qwen2-57B shape replaying `recorded` (with `oracle` predictions, with the
    routing `known` on the host); `before(runtime)` runs once replay is installed."""
    src = RandomSource.named("qwen2-57b-a14b-shape", num_hidden_layers=layers, num_experts=8, num_experts_per_tok=2,
                             **TOY)
    rt = Runtime(src, policy, cache_experts=6, batch=2, trace=True, policy_params=params)
    replay = RoutingReplay(recorded, rt.info.moe_layers, oracle=oracle, known=known)
    replay.install(rt)
    if before is not None:
        before(rt)
    for i, (B, L, N) in enumerate(replay.segments()):
        rt.generate([[1] * L] * B, max_new_tokens=N, accumulate=i > 0)
    return rt, replay


def test_replay_routes_each_layer_as_the_trace_did(recorded):
    rt, replay = replayed_run(recorded, "lru")
    assert replay.segments() == [(2, 5, 4), (2, 3, 3)]
    mine = rt.engine.trace
    theirs = [r for r in recorded if r["layer"] < 3]  # the first three of the trace's four MoE layers
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs):
        assert torch.allclose(a["scores"].float(), b["scores"].float(), atol=1e-3)
        assert torch.equal(a["topk"], b["topk"])  # the shape's own top-k of the same scores (both top-2 here)
    rt.close()


def test_predicting_policies_get_the_recorded_predictions(recorded):
    rt, replay = replayed_run(recorded, "smoe")
    layer = rt.info.moe_layers[0]
    B, S, H = rt.engine.predictor.residual[layer].shape
    x = torch.zeros(B * S, H, dtype=rt.dtype)  # the prediction is computed (its cost is paid), then replaced by the recorded one
    queued = []  # the rest of the layer, queued once: by the first prediction, before its wait
    ctx = PrefetchContext(layer, x, lambda: torch.zeros_like(x), rt.engine.predictor, rt.pool.staging,
                          then=lambda: queued.append(len(queued)))
    assert ctx.gate_scores([]) == [] and queued == []  # nothing to read: nothing queued
    assert np.array_equal(ctx.predict(attention=True), replay.current[layer]["predicted"]["attn1"].float().numpy())
    assert queued == [0] and ctx.predict_s > 0
    ctx.predict(attention=True)
    ctx.finish_layer()
    assert queued == [0]
    assert rt.engine.metrics.summary()["prefetches"] > 0
    rt.close()
    rt, _ = replayed_run(recorded, "hybrimoe")  # looks two layers ahead: noattn2
    rt.close()


@pytest.mark.parametrize("mode,key", [("early", "early1"), ("early-attention", "earlyattn1")])
def test_the_early_predictor_gets_its_recorded_prediction(recorded, mode, key):
    """An early predictor under replay (smoe-early, and with the next layer's attention): the engine queues the early
    prediction (its cost is paid) and the policy gets the trace's record of it, which differs from the attention
    predictor's `attn1` (a layer's routed experts are resident when the recording run predicts)."""
    got = []  # (layer, the key it asked for, what it got)

    def spy(rt):
        predictor = rt.engine.predictor
        plain = predictor.replayed

        def replayed(scores, layer, key):
            out = plain(scores, layer, key)
            got.append((layer, key, out, predictor.replay.current[layer]["predicted"]))
            return out

        predictor.replayed = replayed

    rt, _ = replayed_run(recorded, "smoe-early", before=spy, prefetch_mode=mode)
    assert got and {k for _, k, _, _ in got} == {key}
    assert all(np.array_equal(out, rec[key].float().numpy()) for _, _, out, rec in got)
    assert any(not torch.equal(rec[key], rec["attn1"]) for _, _, _, rec in got)
    assert rt.engine.metrics.summary()["prefetches"] > 0
    rt.close()


@pytest.mark.parametrize("policy,params", [("smoe", {"prefetch_mode": "no-attention"}), ("hybrimoe", {"depth": 2})])
def test_oracle_predictions_are_the_predicted_layers_own_routing(recorded, policy, params):
    """With `oracle`, every prediction a policy reads is the scores the layer `distance` ahead routes by in the same
    forward, not the prediction recorded with the trace (HybriMoE at depth 2 reads two layers ahead), so SMoE
    prefetches only experts that are top-score at their layer."""
    got = []  # (layer, key, what the policy got, forward index, the recorded prediction)

    def spy(rt):
        predictor = rt.engine.predictor
        plain = predictor.replayed

        def replayed(scores, layer, key):
            out = plain(scores, layer, key)
            rec = predictor.replay.current[layer]["predicted"][key].float().numpy()
            got.append((layer, key, out, predictor.replay.cursor[layer] - 1, rec))
            return out

        predictor.replayed = replayed

    rt, replay = replayed_run(recorded, policy, layers=4, before=spy, oracle=True, **params)
    assert {g[1] for g in got} == ({"noattn1"} if policy == "smoe" else {"noattn1", "noattn2"})
    layers = rt.info.moe_layers
    for layer, key, out, i, _ in got:
        target = layers[layers.index(layer) + {"noattn1": 1, "noattn2": 2}[key]]
        assert np.array_equal(out, replay.records[target][i]["scores"].float().numpy()), (layer, key, i)
    # not what the trace recorded (the toy's attn1 predictions are exact: every expert is resident when recorded)
    assert any(not np.allclose(out, rec, atol=1e-3) for _, _, out, _, rec in got)
    assert rt.engine.metrics.summary()["prefetches"] > 0
    if policy == "smoe":
        assert prefetch_accuracy(rt.engine.trace, rt.policy.alpha, rt.info.top_k)["top_score_share"] == 1.0
    rt.close()
    assert [key_distance(prediction_key(a, d)) for a, d in [(True, 1), (False, 1), (False, 3)]] == [1, 1, 3]
    assert key_distance(early_key(True)) == key_distance(early_key(False)) == 1
    with pytest.raises(SmoeError, match="no MoE layer 2 ahead"):
        replay._oracle(layers[-2], "noattn2")


@pytest.mark.parametrize("policy", ["smoe", "hybrimoe"])
def test_known_routing_reads_nothing_back_and_decides_as_a_read_back_one(recorded, policy):
    """With `known`, the engine takes each layer's routing and the policy its predictions from the trace on the host:
    nothing is read back from the device (no `finish_to_host`), and every decision is the one the same run makes
    from what it reads back (SMoE predicts the next layer; HybriMoE two ahead)."""
    reads = []

    def spy(rt):
        staging = rt.pool.staging
        plain = staging.finish_to_host

        def finish_to_host(started, arrays=0):
            reads.append(started[0])  # the channel read
            return plain(started, arrays)

        staging.finish_to_host = finish_to_host

    runs = {}
    for known in (False, True):
        reads.clear()
        rt, _ = replayed_run(recorded, policy, layers=4, before=spy, known=known)
        runs[known] = rt.engine.trace, rt.engine.metrics.summary(), list(reads)
        rt.close()
    (read_back, m_read, reads_read), (known, m_known, reads_known) = runs[False], runs[True]
    assert {"scores", "predict"} <= set(reads_read) and reads_known == []
    assert m_known["prefetches"] > 0 and m_known["loads"] > 0
    counted = ("hits", "loads", "bytes_h2d", "cpu_experts", "substitutions", "prefetches", "prefetch_used",
               "prefetch_in_topk", "predictions")
    for phase in ("prefill", "decode"):
        assert {k: m_known[phase][k] for k in counted} == {k: m_read[phase][k] for k in counted}, phase
    assert len(known) == len(read_back)
    for a, b in zip(known, read_back):
        assert torch.equal(a["scores"], b["scores"]) and torch.equal(a["topk"], b["topk"])
        assert torch.equal(a["actions"], b["actions"])
        assert (a["loads"], a["cpu"], a["evict"], a["prefetch"]) == (b["loads"], b["cpu"], b["evict"], b["prefetch"])


def test_a_run_that_feeds_other_shapes_than_the_trace_is_refused(recorded):
    src = RandomSource.named("qwen2-57b-a14b-shape", num_hidden_layers=3, num_experts=8, num_experts_per_tok=2, **TOY)
    rt = Runtime(src, "lru", cache_experts=6, batch=2)
    RoutingReplay(recorded, rt.info.moe_layers).install(rt)
    with pytest.raises(SmoeError, match="feed `segments"):
        rt.generate([[1] * 4] * 2, max_new_tokens=2)
    rt.close()
    with pytest.raises(SmoeError, match="4 MoE layers; the model has 5"):
        RoutingReplay(recorded, (0, 1, 2, 3, 4))


def test_paper_shape_benchmark_runs_end_to_end_on_toy_widths(tmp_path):
    """The benchmark script on a toy-width deepseek shape (27 MoE layers, 64 experts, top-6) replaying a
    28-layer tiny smolmoe trace: rows for every setting, the floor first, bounds filled in."""
    record_replay_traces(tmp_path)

    def paper_shape(dest: Path, *args: str) -> None:  # the script on the toy shape's exam trace at batch 1
        subprocess.run([sys.executable, str(ROOT / "benchmarks/paper_shape.py"), "--shape", "deepseek-moe-16b-shape",
                        "--tiny", "--device", "cpu", "--traces", str(tmp_path / "traces"), "--workloads", "exam",
                        "--batches", "1", *args, "--out", str(dest)], check=True, cwd=ROOT)

    out = tmp_path / "out"
    paper_shape(out, "--budgets-gb", "0.267", "--policies", "lru", "smoe", "smoe:prefetch_mode=none", "--predictor",
                "graphs", "eager")
    rows = list(csv.DictReader(open(out / "deepseek-moe-16b-shape-tiny.csv")))
    assert {r["copy_gbps"] for r in rows} == {""}  # copies are timed on a GPU's copy stream only
    # the env names whose routing was replayed: the trace file's hash and the router that recorded it
    traced = json.loads((out / "deepseek-moe-16b-shape-tiny_env.json").read_text())["traces"]
    trace = tmp_path / "traces/exam/b1.pt"
    assert traced == {"exam/b1.pt": {"sha256": hashlib.sha256(trace.read_bytes()).hexdigest(), "model": str(tmp_path / "sm"),
                                     "policy": "lru", "router": {"model_type": "smolmoe", "num_experts": 64, "top_k": 8}}}
    # both predictor modes for the policy that predicts, one row for those that do not
    assert [r["policy"] for r in rows] == ["all-gpu", "lru", "smoe", "smoe@eager-predictor", "smoe:prefetch_mode=none"]
    assert rows[2]["hit_rate"] == rows[3]["hit_rate"] and rows[2]["prefetches"] == rows[3]["prefetches"]
    rows.pop(3)
    # --no-floor (a GPU too small for every expert): no floor row, and no bound where there is none to take
    paper_shape(tmp_path / "nofloor", "--budgets-gb", "0.267", "--policies", "lru", "--no-floor")
    bare = list(csv.DictReader(open(tmp_path / "nofloor/deepseek-moe-16b-shape-tiny.csv")))
    assert [(r["policy"], r["bound_s"], r["tpot_over_bound"]) for r in bare] == [("lru", "", "")]
    assert bare[0]["hit_rate"] == rows[1]["hit_rate"]  # the same decisions as beside a floor
    # --cpu-threads with several values: every policy but the floor once per thread count, labelled by it
    paper_shape(tmp_path / "threads", "--budgets-gb", "0.267", "--policies", "lru", "--cpu-threads", "1", "2",
                "--skeleton", "layer", "eager")
    threads = [json.loads(line) for line in (tmp_path / "threads/deepseek-moe-16b-shape-tiny.jsonl").read_text().splitlines()]
    assert [(r["row"]["policy"], r["env"]["cpu_threads"]) for r in threads] == [
        ("all-gpu", 1), ("all-gpu@eager-skeleton", 1), ("lru@cpu1", 1), ("lru@eager-skeleton@cpu1", 1),
        ("lru@cpu2", 2), ("lru@eager-skeleton@cpu2", 2)]
    # --skeleton both ways: each row's bound is the floor of its own skeleton mode
    floors = {r["row"]["policy"]: r["row"]["tpot_s"] for r in threads[:2]}
    assert threads[2]["row"]["bound_s"] >= floors["all-gpu"] and threads[3]["row"]["bound_s"] >= floors["all-gpu@eager-skeleton"]
    assert all(r["env"]["skeleton_graphs"] == 0 for r in threads)  # the graphs serve GPU runs only
    # --block-order both ways: HF's order labelled, the same decisions, each row against its own floor
    paper_shape(tmp_path / "order", "--budgets-gb", "0.267", "--policies", "lru", "--block-order", "router-first",
                "hf")
    order = [json.loads(line) for line in (tmp_path / "order/deepseek-moe-16b-shape-tiny.jsonl").read_text().splitlines()]
    assert [(r["row"]["policy"], r["env"]["router_first"]) for r in order] == [
        ("all-gpu", 27), ("all-gpu@hf-block-order", 0), ("lru", 27), ("lru@hf-block-order", 0)]
    timed = ("policy_time_s", "check_time_s", "prefetch_time_s", "predict_time_s", "cpu_time_s",
             "cpu_host_s")  # differ run to run
    assert order[2]["metrics"]["decode"] == {**order[3]["metrics"]["decode"], **{k: order[2]["metrics"]["decode"][k]
                                                                                 for k in timed}}
    assert order[2]["row"]["bound_s"] >= order[0]["row"]["tpot_s"] and order[3]["row"]["bound_s"] >= order[1]["row"]["tpot_s"]
    # --kv-cache both ways: the static cache's rows labelled, the same decisions, each against its own floor
    paper_shape(tmp_path / "kv", "--budgets-gb", "0.267", "--policies", "lru", "--kv-cache", "dynamic", "static")
    kv = [json.loads(line) for line in (tmp_path / "kv/deepseek-moe-16b-shape-tiny.jsonl").read_text().splitlines()]
    assert [(r["row"]["policy"], r["env"]["kv_cache"]) for r in kv] == [
        ("all-gpu", "dynamic"), ("all-gpu@static-kv", "static"), ("lru", "dynamic"), ("lru@static-kv", "static")]
    assert kv[2]["metrics"]["decode"] == {**kv[3]["metrics"]["decode"], **{k: kv[2]["metrics"]["decode"][k] for k in timed}}
    assert kv[2]["row"]["bound_s"] >= kv[0]["row"]["tpot_s"] and kv[3]["row"]["bound_s"] >= kv[1]["row"]["tpot_s"]
    from smoe.costmodel import MeasuredRun  # the cost model, too, fits each cache's runs against their own floor

    groups = [MeasuredRun.from_record(r, 55.0).group for r in kv]
    assert groups[0] == groups[2] != groups[1] == groups[3] and groups[1][-1] == "static"
    # --repeats: every setting again in a second round, the offloading ones in reverse order, each round's rows
    # bounded by that round's floor; the same decisions in every round
    paper_shape(tmp_path / "rep", "--budgets-gb", "0.267", "--policies", "lru", "smoe", "--repeats", "2")
    rep = [json.loads(line)["row"] for line in (tmp_path / "rep/deepseek-moe-16b-shape-tiny.jsonl").read_text().splitlines()]
    assert [(r["policy"], r["repeat"]) for r in rep] == [
        ("all-gpu", 0), ("lru", 0), ("smoe", 0), ("all-gpu", 1), ("smoe", 1), ("lru", 1)]
    assert [r["bound_s"] for r in rep[1:3]] == [rep[0]["tpot_s"]] * 2  # no link rate on a CPU: the bound is the floor
    assert [r["bound_s"] for r in rep[4:]] == [rep[3]["tpot_s"]] * 2
    assert (rep[1]["hit_rate"], rep[2]["prefetches"]) == (rep[5]["hit_rate"], rep[4]["prefetches"])
    # --predictions both ways: the prefetching policy once with each, the oracle's rows labelled and recorded so;
    # its prefetches all top-score at their layer
    paper_shape(tmp_path / "oracle", "--budgets-gb", "0.267", "--policies", "lru", "smoe", "--predictions",
                "recorded", "oracle")
    oracle = [json.loads(line)
              for line in (tmp_path / "oracle/deepseek-moe-16b-shape-tiny.jsonl").read_text().splitlines()]
    assert [(r["row"]["policy"], r["params"]["oracle_predictions"]) for r in oracle] == [
        ("all-gpu", False), ("lru", False), ("smoe", False), ("smoe@oracle-predictions", True)]
    assert oracle[3]["row"]["prefetches"] > 0 and oracle[3]["row"]["prefetch_top_share"] == 1.0
    # --routing both ways: every setting once with each, the floor too, the known routing's rows labelled, recorded
    # so and bounded by their own floor; the same decisions
    paper_shape(tmp_path / "known", "--budgets-gb", "0.267", "--policies", "smoe", "--routing", "readback", "known")
    known = [json.loads(line)
             for line in (tmp_path / "known/deepseek-moe-16b-shape-tiny.jsonl").read_text().splitlines()]
    assert [(r["row"]["policy"], r["params"]["known_routing"]) for r in known] == [
        ("all-gpu", False), ("all-gpu@known-routing", True), ("smoe", False), ("smoe@known-routing", True)]
    assert known[2]["metrics"]["decode"] == {**known[3]["metrics"]["decode"],
                                             **{k: known[2]["metrics"]["decode"][k] for k in timed}}
    assert [r["row"]["bound_s"] for r in known[2:]] == [known[0]["row"]["tpot_s"], known[1]["row"]["tpot_s"]]
    # --profile: a profile per setting, with the engine's spans and the ops inside them; no rows (not measured)
    prof = tmp_path / "prof"
    paper_shape(prof, "--budgets-gb", "0.267", "--policies", "smoe", "--profile")
    assert sorted(p.name for p in prof.glob("*_profile_*.txt")) == [
        "deepseek-moe-16b-shape-tiny_profile_all-gpu_exam_b1.txt", "deepseek-moe-16b-shape-tiny_profile_smoe_exam_b1.txt"]
    text = (prof / "deepseek-moe-16b-shape-tiny_profile_smoe_exam_b1.txt").read_text()
    for span in ("smoe.layer", "smoe.predict", "smoe.scores_to_host"):
        assert f"\n{span}: " in text, span  # the span's own section of ops
    for span in ("smoe.plan", "smoe.prefetch"):  # SMoE decides on arrays: no torch op inside its plan and prefetch
        assert f"\n{span}: " not in text, span
    # the step's time charged by innermost span (all of it idle on a CPU): the engine's spans and ops outside them
    idle, hosted = text[text.index("device idle in decode steps"):].split("host time in decode steps")

    def table(section: str) -> dict[str, float]:
        return {line.split("ms/step")[1].strip(): float(line.split()[0]) for line in section.splitlines()[1:]}

    charged = table(idle)
    assert {"smoe.plan", "smoe.predict", "smoe.layer", "smoe.load", "smoe.expert", "smoe.combine"} <= set(charged)
    assert all(v > 0 for v in charged.values())
    per_step = float(idle.split(" ms per step")[0].rsplit(" ", 1)[1])
    assert sum(charged.values()) == pytest.approx(per_step, rel=0.05)  # top 25 only: nearly all of it
    # the host's whole step by span: on a CPU every instant is idle, so the same charge
    assert table(hosted) == pytest.approx(charged)
    assert not (prof / "deepseek-moe-16b-shape-tiny.csv").exists()
    assert int(rows[2]["prefetches"]) > 0 and int(rows[3]["prefetches"]) == 0  # the variant runs with its parameter
    assert float(rows[2]["predict_time_s"]) > 0 and float(rows[3]["predict_time_s"]) == 0
    assert all(r["measured"] == "False" and float(r["tpot_s"]) > 0 for r in rows)
    assert float(rows[0]["hit_rate"]) == 1.0 and float(rows[1]["hit_rate"]) < 1.0
    assert len((out / "deepseek-moe-16b-shape-tiny.jsonl").read_text().splitlines()) == 5
    assert json.loads((out / "deepseek-moe-16b-shape-tiny_env.json").read_text())["shape"] == "deepseek-moe-16b-shape"
    # the records carry what the cost model fits and replays (the DAG's gpu_tables rule does this on GPU runs)
    from smoe.costmodel import model_measured_runs

    records = [json.loads(line) for line in (out / "deepseek-moe-16b-shape-tiny.jsonl").read_text().splitlines()]
    assert records[3]["row"]["policy"] == "smoe@eager-predictor" and records[3]["env"]["predictor_graphs"] is False
    records.pop(3)
    validation, modelled = model_measured_runs(records, native_gbps=55.0, measured_on="h200")
    assert [v["policy"] for v in validation] == ["lru", "smoe", "smoe:prefetch_mode=none"]
    assert not any(v["held_out"] for v in validation) and all(v["fit_runs"] == 3 for v in validation)
    # a benchmark run at an emulated link only: every offloading run is held out, nothing fits per-load costs
    emulated = [r if r["params"]["policy"] == "all-gpu" else {**r, "params": {**r["params"], "link_gbps": 12.0}}
                for r in records]
    check, _ = model_measured_runs(emulated, native_gbps=55.0, measured_on="h200")
    assert all(v["held_out"] and v["fit_runs"] == 0 and v["host_per_load_s"] == 0 for v in check)
    # ... and without a floor (`--no-floor`) nothing calibrates the per-layer cost: nothing to check or model,
    # whichever GPU it ran on
    assert model_measured_runs(emulated[1:], native_gbps=55.0, measured_on="h100") == ([], [])
    # a record keeps the parameters it ran with, so a later change of a default does not rewrite it; a record
    # made before records did takes the defaults of its day from the caller
    from smoe.costmodel import MeasuredRun

    smoe_rec = records[2]
    assert smoe_rec["params"]["policy_resolved"]["prefetch_mode"] == "attention"
    assert records[3]["params"]["policy_resolved"]["prefetch_mode"] == "none"
    # one prediction per decode layer that a MoE layer follows: the record's count, as a mean per layer
    per_layer = smoe_rec["metrics"]["decode"]["predictions"] / len(smoe_rec["plans"])
    assert 0.9 < per_layer < 1
    assert MeasuredRun.from_record(smoe_rec, 55.0, {"smoe": {"prefetch_mode": "none"}}).predictions == per_layer
    old = {**smoe_rec, "params": {k: v for k, v in smoe_rec["params"].items() if k != "policy_resolved"}}
    assert MeasuredRun.from_record(old, 55.0).predictions == per_layer
    assert MeasuredRun.from_record(old, 55.0, {"smoe": {"prefetch_mode": "none"}}).predictions == 0
    assert all(v["modelled_tpot_s"] > 0 for v in validation)
    assert {r["gpu"] for r in modelled} == {"rtx3080ti-12g", "rtx4060ti-16g", "a6000-48g", "h200"}
    assert len(modelled) == 3 * 4 and all(r["measured"] is False and r["tpot_s"] > 0 for r in modelled)

    # the ablation script: the same slots on "the CPU" (here the runs themselves) against "the GPU" runs
    slots = rows[1]["slots"]
    paper_shape(tmp_path / "cpu", "--slots", slots, "--policies", "lru", "smoe-ce", "smoe")
    env = json.loads((out / "deepseek-moe-16b-shape-tiny_env.json").read_text())
    (out / "deepseek-moe-16b-shape-tiny_env.json").write_text(json.dumps(env | {"copy_Bps": 55e9}))
    measured = out / "deepseek-moe-16b-shape-tiny.jsonl.gz"  # gzipped, as the GPU records are committed
    measured.write_bytes(gzip.compress((out / "deepseek-moe-16b-shape-tiny.jsonl").read_bytes()))
    subprocess.run([sys.executable, str(ROOT / "benchmarks/shape_ablation.py"), "--replayed",
                    str(tmp_path / "cpu/deepseek-moe-16b-shape-tiny.jsonl"), "--measured",
                    str(measured), "--out", str(tmp_path / "abl")], check=True, cwd=ROOT)
    abl = list(csv.DictReader(open(tmp_path / "abl/deepseek-moe-16b-shape-tiny_ablation.csv")))
    assert [r["policy"] for r in abl] == ["lru", "smoe-ce", "smoe"]
    for r in abl:  # decisions do not depend on the run: the same slots and trace give the same hit rate
        assert float(r["modelled_tpot_s_native"]) > 0
        if r["policy"] in ("lru", "smoe"):
            assert r["hit_rate"] == r["measured_hit_rate"]


def test_run_records_read_plain_or_gzipped(tmp_path):
    """Run records as paper_shape.py appends them (`.jsonl`) and as they are committed (`.jsonl.gz`) read the same,
    blank lines skipped, and both find the environment file written beside them."""
    from smoe.files import env_file, read_jsonl

    records = [{"row": {"policy": "lru", "tpot_s": 0.1}}, {"row": {"policy": "smoe", "tpot_s": 0.05}}]
    plain = tmp_path / "shape_link24.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    packed = tmp_path / "shape_link24.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_jsonl(plain) == read_jsonl(packed) == records
    assert env_file(plain) == env_file(packed) == tmp_path / "shape_link24_env.json"


def test_slim_traces_keep_what_replay_reads(recorded, tmp_path):
    from smoe.cli import main

    (tmp_path / "t/exam").mkdir(parents=True)
    router = {"model_type": "smolmoe", "num_experts": 64, "top_k": 32}
    torch.save({"model": "m", "policy": "lru", "router": router, "records": recorded}, tmp_path / "t/exam/b1.pt")
    assert main(["slim-traces", str(tmp_path / "t"), "--out", str(tmp_path / "slim")]) == 0
    slim = torch.load(tmp_path / "slim/exam/b1.pt", weights_only=False)
    assert slim["model"] == "m" and slim["router"] == router and len(slim["records"]) == len(recorded)
    assert set(slim["records"][-1]) == {"layer", "phase", "step", "scores", "predicted"}
    a, b = RoutingReplay(recorded, (0, 1, 2)), RoutingReplay(slim["records"], (0, 1, 2))
    assert a.segments() == b.segments()
    assert main(["slim-traces", str(tmp_path / "slim/nothing"), "--out", str(tmp_path / "x")]) == 2  # no traces


def test_accelerate_baseline_places_whole_layers_under_the_budget_and_decodes(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from accelerate_offload import place

    config = shape_config("qwen2-57b-a14b-shape")
    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(config, dtype=config.dtype)
    small, large = (place(meta, gb, "cuda") for gb in (44, 100))  # a placement plan needs no GPU
    on_gpu = lambda m: [k for k, v in m.items() if v == 0]  # noqa: E731
    assert 0 < len(on_gpu(small)) < len(on_gpu(large)) and "cpu" in small.values()
    assert all(k.startswith("model.layers.") or k in ("model.embed_tokens", "model.norm", "model.rotary_emb",
                                                      "lm_head") for k in small)  # whole decoder layers
    subprocess.run([sys.executable, str(ROOT / "benchmarks/accelerate_offload.py"), "--shape", "qwen2-57b-a14b-shape",
                    "--tiny", "--device", "cpu", "--budget-gb", "1", "--tokens", "3", "--batches", "1", "2",
                    "--out", str(tmp_path)], check=True, cwd=ROOT)
    rec = json.loads((tmp_path / "qwen2-57b-a14b-shape-tiny_1gib.json").read_text())
    assert [r["batch"] for r in rec["runs"]] == [1, 2] and all(len(r["step_s"]) == 2 for r in rec["runs"])
