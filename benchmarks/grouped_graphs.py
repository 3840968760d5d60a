"""Decode's batched expert products as CUDA graphs (`grouped_experts="graphs"`) against the same products launched
op by op (`"slots"`): the same logits, time per decode step.

    python benchmarks/grouped_graphs.py --out results/gpu/grouped_graphs.csv   # needs a CUDA device with Triton

For tiny models of several families and each policy, one runtime per mode decodes the same prompts `--repeats`
times after a first, warm-up call (which captures most graphs). Written per model, policy and batch: whether every
forward's logits and every token are equal in both modes, the largest logit difference, the median decode step
(TPOT) of both modes, the speed-up, and the graphs' capture time. The tiny models' steps are short; the paper
shape's side by side is `paper_shape.py --grouped slots graphs`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoe.files import write_csv  # noqa: E402
from smoe.runtime import Runtime  # noqa: E402
from smoe.tiny import make_tiny  # noqa: E402

PROMPTS = ["Mixture of experts models route", "Hi", "The cache holds"]


def measure(model: str, family: str, policy: str, slots: int, batch: int, new_tokens: int, repeats: int) -> dict:
    logits, tokens, tpots, env = {}, {}, {}, {}
    for mode in ("slots", "graphs"):
        rt = Runtime(model, policy, device="cuda", cache_experts=slots, batch=batch, grouped_experts=mode)
        seen: list[torch.Tensor] = []
        try:
            rt.generate(PROMPTS[:batch], new_tokens)  # warm-up; captures the graphs of the products it meets
            steps = []
            for _ in range(repeats):
                seen.clear()
                res = rt.generate(PROMPTS[:batch], new_tokens, on_logits=lambda step, x: seen.append(x.float().cpu()))
                steps.append(res.metrics["tpot_s"])
            logits[mode], tokens[mode], tpots[mode], env[mode] = list(seen), res.tokens, steps, rt.environment()
        finally:
            rt.close()
    slots_s, graphs_s = statistics.median(tpots["slots"]), statistics.median(tpots["graphs"])
    return {"family": family, "policy": policy, "slots": slots, "batch": batch, "new_tokens": new_tokens,
            "repeats": repeats, "tokens_equal": tokens["slots"] == tokens["graphs"],
            "bit_equal": all(torch.equal(a, b) for a, b in zip(logits["slots"], logits["graphs"])),
            "max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(logits["slots"], logits["graphs"])),
            "slots_tpot_ms_p50": slots_s * 1e3, "graphs_tpot_ms_p50": graphs_s * 1e3, "speedup_p50": slots_s / graphs_s,
            "capture_s": env["graphs"]["grouped_capture_s"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--families", default="qwen2_moe,mixtral,olmoe")
    ap.add_argument("--policies", default="all-gpu,lru,smoe")
    ap.add_argument("--slots", type=int, default=12, help="expert slots of the offloading policies")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        ap.error("the graphs need a CUDA device (and Triton); none is available")
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for family in args.families.split(","):
        model = str(make_tiny(family, tmp / family))
        for policy in args.policies.split(","):
            for batch in args.batches:
                slots = 10**6 if policy == "all-gpu" else args.slots
                rows.append(measure(model, family, policy, slots, batch, args.new_tokens, args.repeats))
                print(rows[-1], flush=True)
    write_csv(args.out, rows)
    same = sum(r["tokens_equal"] and r["bit_equal"] for r in rows)
    print(f"{same}/{len(rows)} runs with equal tokens and bit-equal logits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
