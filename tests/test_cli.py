"""The command line: `run` writes a complete, reproducible run record and a loadable trace; `policies` lists
every registered policy."""
from __future__ import annotations

import json

import torch

from smoe.cli import main
from smoe.policy import policy_names, policy_params
from smoe.runtime import Runtime
from smoe_test_support import METRIC_KEYS, PHASE_KEYS

FAMILY = "qwen2_moe"
PROMPT_A, PROMPT_B = "The quick brown fox", "Hello"


def test_run_writes_record_and_trace(tiny, tmp_path, capsys):
    out, trace = tmp_path / "res" / "run.json", tmp_path / "tr" / "run.pt"
    argv = ["run", "--model", str(tiny(FAMILY)), "--policy", "lru", "--cache-experts", "6", "--batch", "2",
            "--max-new-tokens", "5", "--prompt", PROMPT_A, "--prompt", PROMPT_B, "--seed", "3",
            "--cpu-threads", "1", "--out", str(out), "--trace", str(trace)]
    assert main(argv) == 0
    assert "error" not in capsys.readouterr().err

    rec = json.loads(out.read_text())
    assert {"params", "metrics", "env", "tokens"} <= set(rec)
    p = rec["params"]
    assert p["model"] == str(tiny(FAMILY))
    assert p["policy"] == "lru"
    assert p["policy_params"] == {}
    assert p["device"] == "cpu"
    assert p["batch"] == 2
    assert p["max_new_tokens"] == 5
    assert p["cache_experts"] == 6 and p["budget_gb"] is None
    assert p["seed"] == 3
    assert p["prompts"] == [PROMPT_A, PROMPT_B]
    # the CPU worker's threads are recorded with the run (in params or, as the effective value, in env)
    assert p.get("cpu_threads", rec["env"].get("cpu_threads")) == 1
    # no --kv-cache: the device's default (a CPU's cache grows each step), named in env
    assert p["kv_cache"] is None and rec["env"]["kv_cache"] == "dynamic"

    m = rec["metrics"]
    assert METRIC_KEYS <= set(m)
    assert PHASE_KEYS <= set(m["prefill"]) and PHASE_KEYS <= set(m["decode"])
    assert m["decode_steps"] == 4
    env = rec["env"]
    assert env["torch"] == torch.__version__
    import transformers

    assert env["transformers"] == transformers.__version__
    assert env["device"] == "cpu"
    from smoe import provenance

    assert env["code"]["sources"] == provenance.source_fingerprint(provenance.ROOT)  # which code ran
    assert rec["memory"]["capacity"] == 6

    tokens = rec["tokens"]
    assert len(tokens) == 2 and all(len(t) == 5 and all(isinstance(x, int) for x in t) for t in tokens)
    # the record's tokens are the library's: the same run through the Python API gives the same ids
    rt = Runtime(tiny(FAMILY), "lru", device="cpu", cache_experts=6, batch=2)
    try:
        assert rt.generate([PROMPT_A, PROMPT_B], 5).tokens == tokens
    finally:
        rt.close()

    data = torch.load(trace, weights_only=False)
    assert data["policy"] == "lru"
    records = data["records"]
    assert len(records) == 5 * 3  # forward passes x MoE layers
    assert records[0]["phase"] == "prefill" and records[-1]["phase"] == "decode"
    for r in records:
        assert {"step", "phase", "layer", "scores", "topk", "actions", "loads", "cpu", "evict"} <= set(r)
        T = r["topk"].shape[0]
        assert r["topk"].shape == (T, 2) and r["actions"].shape == (T, 2) and r["scores"].shape == (T, 8)
    assert sum(len(r["loads"]) for r in records) == m["loads"]
    assert not list(tmp_path.rglob("*.tmp")), "temporary files were left behind"


def test_run_with_policy_parameters_and_prompt_file(tiny, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first prompt\n\nsecond prompt\n")
    out = tmp_path / "run.json"
    argv = ["run", "--model", str(tiny(FAMILY)), "--policy", "cpu-assist", "--cache-experts", "6", "--batch", "3",
            "--max-new-tokens", "3", "--prompt-file", str(prompts), "--set", "calibration=none", "--kv-cache", "static",
            "--out", str(out)]
    assert main(argv) == 0
    rec = json.loads(out.read_text())
    assert rec["params"]["policy_params"] == {"calibration": "none"}
    assert rec["params"]["kv_cache"] == "static" and rec["env"]["kv_cache"] == "static"
    assert rec["params"]["prompts"] == ["first prompt", "second prompt", "first prompt"]  # cycled to the batch
    assert len(rec["tokens"]) == 3
    assert rec["metrics"]["cpu_experts"] > 0
    # the host's work around the CPU experts is timed apart from their compute, and only where there are some
    decode = rec["metrics"]["decode"]
    assert decode["cpu_experts"] > 0 and decode["cpu_host_s"] > 0 and decode["cpu_time_s"] > 0
    lru = tmp_path / "lru.json"
    lru_argv = [a for a in argv if a not in ("--set", "calibration=none")]
    lru_argv[lru_argv.index("cpu-assist")], lru_argv[-1] = "lru", str(lru)
    assert main(lru_argv) == 0
    assert json.loads(lru.read_text())["metrics"]["decode"]["cpu_host_s"] == 0.0


def test_trace_calibrates_cpu_assist(tiny, tmp_path):
    """A trace written by `run --trace` is what cpu-assist's calibration reads: its resident set is then
    preloaded (counted apart from run loads) and never changes."""
    trace, out = tmp_path / "t.pt", tmp_path / "run.json"
    base = ["run", "--model", str(tiny(FAMILY)), "--cache-experts", "4", "--batch", "2", "--max-new-tokens", "4",
            "--prompt", PROMPT_A, "--prompt", PROMPT_B]
    assert main(base + ["--policy", "lru", "--trace", str(trace)]) == 0
    assert main(base + ["--policy", "cpu-assist", "--set", f"calibration={trace}", "--out", str(out)]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["preload_loads"] == 4 and m["loads"] == 0 and m["cpu_experts"] > 0


def test_policies_lists_every_registered_name(capsys):
    assert main(["policies"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = [line.split()[0] for line in lines if line.strip()]
    assert listed == policy_names()
    for line in lines:  # each with its parameters
        name = line.split()[0]
        for param in policy_params(name):
            assert f"{param}=" in line
