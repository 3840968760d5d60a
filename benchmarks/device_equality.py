"""Decisions do not depend on the device: run policies on cuda and on cpu with the same inputs and compare
tokens, hit rates, loads, substitutions, skips, prefetches and CPU-expert counts.

    python benchmarks/device_equality.py --out results/gpu/device_equality_h200.csv   # needs a CUDA device
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoe.cli import run_one  # noqa: E402
from smoe.files import write_csv  # noqa: E402
from smoe.tiny import make_tiny  # noqa: E402

KEYS = ("hit_rate", "loads", "substitutions", "skips", "prefetches", "prefetch_used", "cpu_experts")
PROMPTS = ["Mixture of experts models route", "Hi"]  # batch 2, 16 new tokens, every run


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--families", default="qwen2_moe,deepseek_v3,mixtral")
    ap.add_argument("--policies", default="smoe-ce,smoe-ce-cr,smoe-ce-cr-pre,smoe,skip,score-lower,moe-infinity,hybrimoe,lfu,fifo")
    ap.add_argument("--slots", type=int, default=6)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for fam in args.families.split(","):
        model = str(make_tiny(fam, tmp / fam))
        for policy in args.policies.split(","):
            recs = [run_one(model=model, policy=policy, device=dev, batch=2, max_new_tokens=16,
                            prompts=PROMPTS, cache_experts=args.slots)
                    for dev in ("cuda", "cpu")]
            g, c = recs[0]["metrics"], recs[1]["metrics"]
            rows.append({"family": fam, "policy": policy, "slots": args.slots,
                         "tokens_equal": recs[0]["tokens"] == recs[1]["tokens"],
                         "counts_equal": all(g[k] == c[k] for k in KEYS),
                         **{f"{k}": g[k] for k in KEYS}})
            print(rows[-1], flush=True)
    write_csv(args.out, rows)
    ok = sum(r["tokens_equal"] and r["counts_equal"] for r in rows)
    print(f"{ok}/{len(rows)} runs identical on cuda and cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
