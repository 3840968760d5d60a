"""Benchmark scripts that have no other test, run on a tiny checkpoint (their numbers mean nothing here)."""
import csv
import subprocess
import sys
from pathlib import Path

from smoe.hardware import gpu_model
from smoe.tiny import make_tiny
from smoe_test_support import record_replay_traces

ROOT = Path(__file__).resolve().parents[1]


def test_ablation_runs_only_the_groups_asked_for(tmp_path):
    model = make_tiny("qwen2_moe", tmp_path / "m")
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/ablation.py"), "--model", str(model), "--cache-experts",
                    "6", "--tokens", "4", "--repeats", "1", "--groups", "moe-infinity", "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True)
    assert sorted(p.name for p in out.iterdir()) == ["moe_infinity.csv"]
    rows = list(csv.DictReader(open(out / "moe_infinity.csv")))
    assert [(r["lookahead"], r["history"]) for r in rows] == [(str(la), h) for la in (1, 2, 3, 4)
                                                            for h in ("False", "True")]
    assert all(0 <= float(r["hit_rate"]) <= 1 and "top_score_share" in r for r in rows)


def test_skeleton_graphs_benchmark_compares_each_graph_mode_with_eager(tmp_path):
    """benchmarks/skeleton_graphs.py on the CPU (the pieces run eagerly there): a row per family, batch and graph
    mode, the logits bit-equal to the eager mode's, the Qwen2-MoE layers served (their feed-forward half too in
    the `layer` mode) and OLMoE's not (q/k norms)."""
    out = tmp_path / "sk.csv"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/skeleton_graphs.py"), "--device", "cpu", "--families",
                    "qwen2_moe,olmoe", "--shape-layers", "0", "--batches", "1", "3", "--repeats", "1", "--kv-cache",
                    "dynamic", "static", "--out", str(out)], check=True, cwd=ROOT)
    rows = list(csv.DictReader(open(out)))
    assert [(r["model"], r["batch"], r["kv_cache"], r["graphs"]) for r in rows] == [
        (m, b, kv, g) for b in ("1", "3") for kv in ("dynamic", "static") for m in ("qwen2_moe", "olmoe")
        for g in ("attention", "layer")]
    assert all(r["bit_equal"] == "True" and float(r["max_abs_diff"]) == 0 for r in rows)
    assert [int(r["layers_served"]) > 0 for r in rows] == [True, True, False, False] * 4
    assert [int(r["block_layers_served"]) > 0 for r in rows] == [False, True, False, False] * 4


def test_decisions_vs_commit_finds_the_same_decisions_at_head(tmp_path):
    """benchmarks/decisions_vs_commit.py against HEAD: in a clean checkout the working tree is HEAD, so every run
    must decide the same (a difference would mean the replay is not deterministic or the comparison is wrong; with
    uncommitted policy changes this test reports them, as the script would)."""
    traces = record_replay_traces(tmp_path)
    out = tmp_path / "dvc.csv"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/decisions_vs_commit.py"), "--rev", "HEAD", "--traces",
                    str(traces), "--slots", "600", "--policies", "lru", "smoe", "--workloads", "exam", "--batches", "1",
                    "--out", str(out)], check=True, cwd=ROOT)
    rows = list(csv.DictReader(open(out)))
    assert [(r["policy"], r["same_decisions"]) for r in rows] == [("all-gpu", "True"), ("lru", "True"), ("smoe", "True")]
    assert all(float(r["old_policy_ms_per_step"]) > 0 and float(r["new_policy_ms_per_step"]) > 0 for r in rows)


def test_decision_sensitivity_counts_runs_that_flip_and_none_below_float32_rounding(tmp_path):
    """benchmarks/decision_sensitivity.py: noise far below float32's resolution (1e-12) leaves every run as it was;
    noise of half a hidden state's size changes every run."""
    out = tmp_path / "sens.csv"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/decision_sensitivity.py"), "--families", "qwen2_moe",
                    "--policies", "smoe", "--eps", "1e-12", "0.5", "--seeds", "2", "--out", str(out)],
                   check=True, cwd=ROOT)
    rows = list(csv.DictReader(open(out)))
    assert [(r["family"], r["policy"], r["differ_at_1e-12"], r["differ_at_0.5"]) for r in rows] == [
        ("qwen2_moe", "smoe", "0", "2")]


def test_write_csv_replaces_a_file_whole_or_not_at_all(tmp_path):
    """smoe.files.write_csv (every benchmark's table): the rows in the given column order; a write that fails
    halfway leaves the file as it was and no temporary file beside it."""
    import pytest

    from smoe.files import write_csv

    out = tmp_path / "sub" / "t.csv"
    write_csv(out, [{"a": 1, "b": 2}, {"a": 3, "b": 4}], ["b", "a"])
    assert out.read_text().splitlines() == ["b,a", "2,1", "4,3"]
    with pytest.raises(ValueError):
        write_csv(out, [{"a": 5, "b": 6}, {"a": 7, "c": 8}])  # a key outside the columns: csv refuses the row
    assert out.read_text().splitlines() == ["b,a", "2,1", "4,3"]
    assert [p.name for p in out.parent.iterdir()] == ["t.csv"]


def test_attention_backends_benchmark_times_each_backend_against_a_float64_reference(tmp_path):
    """benchmarks/attention_backends.py on the CPU: a row per batch, KV length, mask and backend; the ones that
    ran are close to the float64 reference (bf16 inputs), and a backend that cannot take a case says why."""
    out = tmp_path / "ab.csv"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/attention_backends.py"), "--device", "cpu", "--batches",
                    "1", "3", "--kv-lens", "16", "--calls", "2", "--backends", "default", "math", "cudnn",
                    "--out", str(out)], check=True, cwd=ROOT)
    rows = list(csv.DictReader(open(out)))
    assert [(r["batch"], r["mask"], r["backend"]) for r in rows] == [
        (b, m, k) for b in ("1", "3") for m in ("False", "True") for k in ("default", "math", "cudnn")]
    ran = [r for r in rows if not r["error"]]
    assert {r["backend"] for r in ran} == {"default", "math"}  # no cuDNN on a CPU
    assert all(float(r["host_us"]) > 0 and float(r["wall_us"]) >= float(r["host_us"]) for r in ran)
    assert all(0 < float(r["max_abs_diff"]) < 2e-2 for r in ran)
    assert all(r["error"] for r in rows if r["backend"] == "cudnn")


def _load_benchmark(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decision_time_times_every_piece_without_changing_what_runs(tmp_path):
    """benchmarks/decision_time.py: an instrumented replay decides exactly as a plain one; the policy, engine and
    predictor classes are as they were afterwards (lru, which does not prefetch, is not made to); each decode
    layer charges one plan, one check and its repeat; prefetch decisions are timed for smoe only; the probes run twice
    at every decode layer and change nothing either."""
    from smoe.engine import Engine
    from smoe.policy import ExpertPolicy, make_policy
    from smoe.predict import PrefetchContext
    from smoe.replay import run_replayed
    from smoe.shapes import RandomSource

    dt = _load_benchmark("decision_time")
    traces = record_replay_traces(tmp_path)
    source = RandomSource.named("qwen2-57b-a14b-shape", **dt.TOY)
    trace = traces / "exam" / "b1.pt"
    before = {c: dict(vars(c)) for c in (Engine, PrefetchContext, type(make_policy("lru")), type(make_policy("smoe")))}

    def counts(m, phase="decode"):
        return {k: v for k, v in m[phase].items() if not k.endswith("_s")}

    for policy, params in (("lru", {}), ("smoe", {}), ("smoe", {"prefetch_gate": 1})):
        plain = run_replayed(source, policy, trace, 1, params=params, cache_experts=600)["metrics"]
        spec = policy + "".join(f":{k}={v}" for k, v in params.items())  # a policy spec, as on the command line
        clock, policy_us, timed = dt.one_run(source, spec, trace, 1, 600)
        for phase in ("prefill", "decode"):
            assert counts(plain, phase) == counts(timed, phase)
        assert clock.layers == plain["decode_steps"] * 28
        assert clock.calls["plan"] == clock.calls["check"] == clock.calls["check (again)"] == clock.layers
        assert clock.calls["prefetch"] == (clock.layers if policy == "smoe" else 0)
        assert all(clock.seconds[p] > 0 for p in ("plan", "check", "check (again)", "gate_weights")) and policy_us > 0
    probe = dt.Clock()
    with dt.probed(probe):  # the probes run at every decode layer, twice each, and change nothing the run decides
        probed = run_replayed(source, "smoe", trace, 1, cache_experts=600)["metrics"]
    assert counts(probed) == counts(run_replayed(source, "smoe", trace, 1, cache_experts=600)["metrics"])
    assert probe.layers == probed["decode_steps"] * 28
    assert {k: v for k, v in probe.calls.items() if v} == {
        p + again: probe.layers for p in dt.PROBES for again in ("", dt.AGAIN)}
    assert {c: dict(vars(c)) for c in before} == before
    assert type(make_policy("lru")).prefetch is ExpertPolicy.prefetch

    out = tmp_path / "dt.csv"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/decision_time.py"), "--traces", str(traces), "--slots",
                    "600", "--policies", "lru", "smoe", "--repeats", "1", "--probe", "--out", str(out)],
                   check=True, cwd=ROOT)
    rows = list(csv.DictReader(open(out)))
    assert {(r["policy"], r["piece"]) for r in rows} == {
        (p, piece) for p in ("lru", "smoe") for piece in dt.PIECES if piece != "prefetch" or p == "smoe"} | {
        (p, probe + again) for p in ("lru", "smoe") for probe in dt.PROBES for again in ("", dt.AGAIN)}


def test_cpu_experts_benchmark_times_the_runtime_expert_against_a_plain_read(tmp_path):
    """benchmarks/cpu_experts.py: a row per (shape, op, tokens, threads), the read rows the reference of their
    thread count, and every time positive; a bad count is refused by name."""
    out = tmp_path / "cpu.csv"
    cmd = [sys.executable, str(ROOT / "benchmarks/cpu_experts.py"), "--shapes", "deepseek-moe-16b-shape",
           "--tokens", "1", "3", "--threads", "1", "2", "--reps", "2", "--pool-mb", "1", "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    rows = list(csv.DictReader(open(out)))
    assert sorted((r["op"], r["tokens"], r["threads"]) for r in rows) == sorted(
        [("read", "0", t) for t in ("1", "2")] + [("expert", n, t) for n in ("1", "3") for t in ("1", "2")])
    assert all(float(r["ms"]) > 0 and float(r["gbps"]) > 0 for r in rows)
    assert all(float(r["of_read"]) == 1.0 for r in rows if r["op"] == "read")
    bad = subprocess.run(cmd[:-2] + ["--threads", "0", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--threads [0]" in bad.stderr


def test_cpu_worker_benchmark_times_both_sums_against_the_forwards(tmp_path):
    """benchmarks/cpu_worker.py: a row per (tokens, threads, op, busy), each op measured against the forwards of the
    same setting; its per-expert sum (the comparison) is the same sum as the runtime's; a bad count is refused."""
    import importlib.util

    import numpy as np
    import torch

    from smoe.checkpoint import ExpertShape
    from smoe.store import weighted_expert_sum

    out = tmp_path / "worker.csv"
    cmd = [sys.executable, str(ROOT / "benchmarks/cpu_worker.py"), "--shapes", "deepseek-moe-16b-shape", "--tokens",
           "1", "3", "--threads", "1", "--experts", "2", "--reps", "2", "--pool-mb", "1", "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    rows = list(csv.DictReader(open(out)))
    assert sorted((r["tokens"], r["op"], r["busy"]) for r in rows) == sorted(
        (n, op, b) for n in ("1", "3") for op in ("forwards", "summed", "per-expert") for b in ("False", "True"))
    assert all(float(r["ms"]) > 0 for r in rows)
    assert all(float(r["over_forwards_ms"]) == 0 for r in rows if r["op"] == "forwards")
    bad = subprocess.run(cmd[:-2] + ["--experts", "0", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--experts 0" in bad.stderr
    spec = importlib.util.spec_from_file_location("cpu_worker", ROOT / "benchmarks/cpu_worker.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shape = ExpertShape(hidden=16, intermediate=8)
    experts = torch.randn(4, shape.numel)  # [E, 3*I*H]
    x, w = torch.randn(3, 16), np.random.default_rng(1).random((3, 4), dtype=np.float32)  # [T,H], [T,E]
    jobs = [(0, [1]), (1, [0, 2]), (3, [0, 1, 2])]
    args = (x, jobs, experts.__getitem__, w, shape, torch.nn.functional.silu)
    torch.testing.assert_close(bench.per_expert_sum(*args), weighted_expert_sum(*args))


def test_planning_share_reads_committed_runs_and_the_abs_decided_the_same(tmp_path):
    """benchmarks/planning_share.py on the committed planning A/Bs (results/gpu/planning_ab_h200_s36, _s37 and _s38): a
    row per run, the share and per-layer time from the run record's own counters, and, as the README says, every run of
    one batch size made the same decisions whichever of the four code versions ran it."""
    import gzip
    import json

    out = tmp_path / "share.csv"
    folders = [f for ab in ("s36", "s37", "s38")
               for f in sorted((ROOT / f"results/gpu/planning_ab_h200_{ab}").glob("*_*"))]
    subprocess.run([sys.executable, str(ROOT / "benchmarks/planning_share.py"), *map(str, folders), "--out", str(out)],
                   check=True, cwd=ROOT)
    rows = list(csv.DictReader(open(out)))
    assert [r["folder"] for r in rows[::8]] == [f.name for f in folders] and len(rows) == 112
    rec = json.loads(gzip.open(next(folders[0].glob("*.jsonl.gz")), "rt").readline())  # the folder's first run
    dec, steps = rec["metrics"]["decode"], rec["metrics"]["decode_steps"]
    first = rows[0]
    assert float(first["share"]) == dec["policy_time_s"] / (steps * rec["metrics"]["tpot_s"])
    assert abs(float(first["policy_us_per_layer"]) - 1e6 * dec["policy_time_s"] / (steps * 28)) < 1e-6
    smoe = [r for r in rows if r["policy"] == "smoe"]
    for batch in ("1", "3"):
        assert len({r["decisions"] for r in smoe if r["batch"] == batch}) == 1
    assert all(0 < float(r["share"]) < 1 for r in rows)


def test_planning_share_splits_check_and_prefetch_where_the_record_has_them(tmp_path):
    """planning_share.py's parts of the decision time: the check and the prefetch decisions per decode layer from the
    record's own counters (thirty-fifth campaign, which counted the prefetch apart), blank for a record made before."""
    import gzip
    import json

    new = ROOT / "results/gpu/paper_shape_h200_s39_xverse24_b1_all"
    old = ROOT / "results/gpu/planning_ab_h200_s38/new_a"
    out = tmp_path / "share.csv"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/planning_share.py"), str(new), str(old), "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True)
    rows = list(csv.DictReader(open(out)))
    recs = [json.loads(line) for line in gzip.open(next(new.glob("*.jsonl.gz")), "rt")]
    assert len(rows) == len(recs) + 8  # the A/B folder holds 8 runs
    for row, rec in zip(rows, recs):
        dec, per_layer = rec["metrics"]["decode"], 1e6 / (rec["metrics"]["decode_steps"] * 28)
        assert abs(float(row["check_us_per_layer"]) - dec["check_time_s"] * per_layer) < 1e-6
        assert abs(float(row["prefetch_us_per_layer"]) - dec["prefetch_time_s"] * per_layer) < 1e-6
        parts = float(row["check_us_per_layer"]) + float(row["prefetch_us_per_layer"])
        assert parts < float(row["policy_us_per_layer"])  # the plans themselves take the rest
        assert (float(row["prefetch_us_per_layer"]) > 0) == (row["policy"] in ("smoe", "hybrimoe", "moe-infinity"))
    assert all(r["prefetch_us_per_layer"] == "" and float(r["check_us_per_layer"]) > 0 for r in rows[len(recs):])


def test_planning_share_counts_the_layers_a_run_had(tmp_path):
    """A run of the shape's first 14 layers (`paper_shape.py --layers 14`, model `qwen2-57b-a14b-shape-14l`; the
    forty-seventh campaign's, results/gpu/bound_h100_s54/call1) is timed per decode layer over the 14 MoE layers its
    record planned, not over the named shape's 28, nor left blank."""
    import gzip
    import json

    run = ROOT / "results/gpu/bound_h100_s54/call1"
    out = tmp_path / "share.csv"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/planning_share.py"), str(run), "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True)
    rows = list(csv.DictReader(open(out)))
    recs = [json.loads(line) for line in gzip.open(next(run.glob("*.jsonl.gz")), "rt")]
    assert len(rows) == len(recs) == 16 and {r["model"] for r in rows} == {"qwen2-57b-a14b-shape-14l"}
    for row, rec in zip(rows, recs):
        dec = rec["metrics"]["decode"]
        per_layer = 1e6 * dec["policy_time_s"] / (rec["metrics"]["decode_steps"] * 14)
        assert abs(float(row["policy_us_per_layer"]) - per_layer) < 1e-6


def test_paper_shape_names_the_gpu_its_rows_were_timed_on():
    """A CUDA device's name -> the `gpu` column's default: H100 rows are not labelled h200."""
    assert gpu_model("NVIDIA H100 80GB HBM3") == "h100" and gpu_model("NVIDIA H200") == "h200"
    assert gpu_model("NVIDIA GeForce RTX 4090") == "4090" and gpu_model("Some Accelerator") == "some-accelerator"
