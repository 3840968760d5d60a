"""Core-runtime benchmark on a GPU: correctness across devices, copy bandwidth, copy/compute overlap, and
TPOT / TTFT / hit rate of every baseline at two budgets on a mid-size checkpoint with real expert sizes.

    python benchmarks/core_gpu.py --out results/gpu/core        # needs a CUDA device

Writes to --out:
  tiny.csv           every tiny family x baseline x budget on cuda and cpu: tokens / hit rate / loads equal?
  mid.csv            the mid-size checkpoint: every core baseline at two budgets, batch 1 and 3 (TPOT, TTFT,
                     hit rate, ...), medians over --repeats interleaved rounds
  mid_runs.json      the full run records behind mid.csv
  summary.json       host->device copy rates (one expert, 1 GiB; pinned, pageable); from profiler traces of
                     on-demand and lru decoding, how much kernel time runs under expert copies; the same
                     shape in float32 (3 layers, smaller vocab) run on cuda and cpu: tokens and counts equal?
The mid table also has `hf-eager` rows: the plain HF model wholly on the GPU, decoded by the same loop,
with no runtime in between (the reference for the runtime's own overhead).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoe.cli import run_one  # noqa: E402
from smoe.errors import SmoeError  # noqa: E402
from smoe.files import write_csv  # noqa: E402
from smoe.hardware import h2d_rate  # noqa: E402
from smoe.timeline import merge, overlap  # noqa: E402
from smoe.tiny import TINY, make_tiny  # noqa: E402

CORE = ["on-demand", "lru", "cpu-assist", "all-gpu"]  # the core runtime's baselines; see ablation.py for the rest
PROMPTS = [
    "Mixture-of-experts language models route every token to a few experts, so",
    "The three most important ideas in computer architecture are",
    "Once upon a time",
]

# DeepSeek-V2-Lite's MoE layer is deepseek-moe-16b's: hidden 2048, 64 routed experts of 1408, top-6,
# 2 shared experts, first layer dense (intermediate 10944). Cut to 4 decoder layers, random bf16 weights.
MID = dict(
    hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=4,
    num_attention_heads=16, num_key_value_heads=16, n_routed_experts=64, num_experts_per_tok=6,
    n_shared_experts=2, first_k_dense_replace=1, kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64,
    qk_nope_head_dim=128, v_head_dim=128, vocab_size=102400, max_position_embeddings=4096,
    routed_scaling_factor=1.0, topk_method="greedy", n_group=None, topk_group=None,
)


def bandwidth(expert_bytes: int) -> dict:
    return {f"{'pinned' if pinned else 'pageable'}_{nbytes}B_GBps": h2d_rate(nbytes, pinned, reps) / 1e9
            for pinned in (True, False) for nbytes, reps in ((expert_bytes, 200), (1 << 30, 10))}


def tiny_equality(tmp: Path, rows: list[dict]) -> None:
    for fam in TINY:
        d = make_tiny(fam, tmp / fam)
        for policy in ("all-gpu", "lru", "on-demand", "cpu-assist"):
            for slots in (4, 1000):
                recs = {}
                for device in ("cuda", "cpu"):
                    try:
                        recs[device] = run_one(model=str(d), policy=policy, device=device, batch=2,
                                               max_new_tokens=16, prompts=PROMPTS[:2], cache_experts=slots)
                    except SmoeError as e:
                        recs[device] = {"error": str(e)}
                if "error" in recs["cuda"]:
                    assert "error" in recs["cpu"]
                    continue
                g, c = recs["cuda"]["metrics"], recs["cpu"]["metrics"]
                rows.append({
                    "family": fam, "policy": policy, "slots": slots,
                    "tokens_equal": recs["cuda"]["tokens"] == recs["cpu"]["tokens"],
                    "counts_equal": all(g[k] == c[k] for k in ("hit_rate", "loads", "bytes_h2d", "cpu_experts")),
                    "hit_rate": g["hit_rate"], "loads": g["loads"],
                })


def hf_eager(model: str, batch: int, tokens: int, repeats: int) -> dict:
    """The plain HF model, every weight on the GPU, decoded by the runtime's own greedy loop."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smoe.generate import greedy_decode

    tok = AutoTokenizer.from_pretrained(model, padding_side="left")
    ref = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16, device_map="cuda").eval()
    enc = tok(PROMPTS[:batch], return_tensors="pt", padding=True).to("cuda")
    greedy_decode(ref, enc["input_ids"], enc["attention_mask"], 4)  # warm-up
    runs = [greedy_decode(ref, enc["input_ids"], enc["attention_mask"], tokens) for _ in range(repeats)]
    del ref
    torch.cuda.empty_cache()
    tpots = [statistics.mean(run.step_s) for run in runs]
    return {"policy": "hf-eager", "batch": batch, "slots": None, "repeats": repeats,
            "ttft_s": statistics.median(run.ttft_s for run in runs), "tpot_s": statistics.median(tpots),
            "tpot_min_s": min(tpots), "tpot_max_s": max(tpots), "hit_rate": 1.0}


def overlap_from_profile(model: str, policy: str, slots: int) -> dict:
    """Profile decode steps; how much of the kernels' time runs while an expert copy is in flight."""
    from torch.profiler import ProfilerActivity, profile

    from smoe.runtime import Runtime

    rt = Runtime(model, policy, device="cuda", cache_experts=slots, batch=1)
    rt.generate(PROMPTS[:1], max_new_tokens=4)  # warm-up
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        rt.generate(PROMPTS[:1], max_new_tokens=8)
    rt.close()
    path = Path(tempfile.mkdtemp()) / "trace.json"
    prof.export_chrome_trace(str(path))
    events = json.loads(path.read_text())["traceEvents"]
    copies = merge([(e["ts"], e["ts"] + e["dur"]) for e in events
                     if e.get("cat") == "gpu_memcpy" and "HtoD" in e.get("name", "") and e["dur"] > 20])
    kernels = merge([(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "kernel"])
    copy_us = sum(t - s for s, t in copies)
    kernel_us = sum(t - s for s, t in kernels)
    both = overlap(copies, kernels)
    wall = max(c[1] for c in copies + kernels) - min(c[0] for c in copies + kernels)
    return {"policy": policy, "slots": slots, "expert_copies": len(copies), "copy_busy_us": copy_us,
            "kernel_busy_us": kernel_us, "both_busy_us": both, "gpu_wall_us": wall,
            "kernel_time_under_copies": both / kernel_us if kernel_us else None,
            "copy_engine_busy_share": copy_us / wall}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mid-dir", help="keep the mid-size checkpoint here (default: a temporary folder)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp())
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)

    expert_bytes = 3 * 2048 * 1408 * 2
    bw = bandwidth(expert_bytes)
    print("bandwidth GB/s:", {k: round(v, 1) for k, v in bw.items()}, flush=True)

    rows: list[dict] = []
    t0 = time.perf_counter()
    tiny_equality(tmp, rows)
    write_csv(out / "tiny.csv", rows)
    print(f"tiny families: {sum(r['tokens_equal'] for r in rows)}/{len(rows)} token-equal, "
          f"{sum(r['counts_equal'] for r in rows)}/{len(rows)} counts-equal cuda vs cpu ({time.perf_counter() - t0:.0f}s)",
          flush=True)

    t0 = time.perf_counter()
    mid = make_tiny("deepseek_v2", Path(args.mid_dir) if args.mid_dir else tmp / "mid", dtype=torch.bfloat16,
                    device="cuda", **MID)
    print(f"mid checkpoint written in {time.perf_counter() - t0:.0f}s", flush=True)
    total = 3 * 64
    run_one(model=str(mid), policy="lru", device="cuda", batch=1, max_new_tokens=4, prompts=PROMPTS[:1],
            cache_experts=48)  # warm-up: CUDA context, cuBLAS handles, kernel caches
    configs = [(b, slots, p) for b in (1, 3) for slots in (48, 120, total) for p in CORE
               if (p == "all-gpu") == (slots == total)]
    runs: dict[tuple, list[dict]] = {}
    for _ in range(args.repeats):  # interleaved rounds: machine noise spreads over every config alike
        for batch, slots, policy in configs:
            rec = run_one(model=str(mid), policy=policy, device="cuda", batch=batch, max_new_tokens=args.tokens,
                          prompts=PROMPTS[:batch], cache_experts=slots, cpu_threads=15)
            runs.setdefault((batch, slots, policy), []).append(rec)
    table = []
    for (batch, slots, policy), recs in runs.items():
        ms = [r["metrics"] for r in recs]
        m, steps = ms[0], ms[0]["decode_steps"]
        med = lambda k: statistics.median(x[k] for x in ms)  # noqa: E731
        table.append({
            "policy": policy, "batch": batch, "slots": slots, "repeats": len(ms), "ttft_s": med("ttft_s"),
            "tpot_s": med("tpot_s"), "tpot_p50_s": med("tpot_p50_s"), "tpot_p90_s": med("tpot_p90_s"),
            "tpot_min_s": min(x["tpot_s"] for x in ms), "tpot_max_s": max(x["tpot_s"] for x in ms),
            "hit_rate": m["hit_rate"], "decode_loads_per_step": m["decode"]["loads"] / steps,
            "decode_cpu_experts_per_step": m["decode"]["cpu_experts"] / steps,
            "policy_ms_per_step": 1e3 * med("policy_time_s") / steps, "peak_device_gib": m["peak_device_bytes"] / 2**30,
        })
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in table[-1].items()), flush=True)
    for batch in (1, 3):
        table.append(hf_eager(mid, batch, args.tokens, args.repeats))
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in table[-1].items()), flush=True)
    # CPU vs GPU on the mid model: the same decisions and tokens? bf16 kernels round differently on the two
    # devices, so the comparison that isolates the runtime's decisions is made in float32.
    cpu_check = []
    mid32 = make_tiny("deepseek_v2", tmp / "mid32", dtype=torch.float32, device="cuda",
                      **{**MID, "num_hidden_layers": 3, "vocab_size": 32000})
    for policy in ("lru", "cpu-assist", "on-demand"):
        recs = [run_one(model=str(mid32), policy=policy, device=dev, batch=1, max_new_tokens=16, prompts=PROMPTS[:1],
                        cache_experts=48, cpu_threads=15) for dev in ("cuda", "cpu")]
        cpu_check.append({"policy": policy, "tokens_equal": recs[0]["tokens"] == recs[1]["tokens"],
                          "hit_rate_cuda": recs[0]["metrics"]["hit_rate"], "hit_rate_cpu": recs[1]["metrics"]["hit_rate"],
                          "loads_cuda": recs[0]["metrics"]["loads"], "loads_cpu": recs[1]["metrics"]["loads"]})
        print("mid cuda vs cpu:", cpu_check[-1], flush=True)
    (out / "mid_runs.json").write_text(json.dumps({"runs": [r for recs in runs.values() for r in recs]}, indent=1))
    write_csv(out / "mid.csv", table)
    ov = [overlap_from_profile(str(mid), p, 48) for p in ("on-demand", "lru")]
    print("overlap:", ov, flush=True)
    (out / "summary.json").write_text(json.dumps({"bandwidth_GBps": bw, "overlap": ov, "cpu_vs_cuda_fp32": cpu_check}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
