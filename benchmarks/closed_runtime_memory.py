"""Device memory a closed Runtime leaves allocated: several runs in one process (as `paper_shape.py` makes them), each
closed, and the allocated bytes over the process's start printed after each. A process that runs many must not count
one run's leftovers against the next one's budget.

    python benchmarks/closed_runtime_memory.py --traces traces --out results/gpu/closed_runtime_memory_h200.csv

The Qwen2-57B shape at toy widths (`paper_shape.py --tiny`), SMoE, exam at batch 1, the trace's first generate call.
`--keep-cublas` skips the cuBLAS workspace release that `Runtime.close` does, to show what it frees.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoe.replay import filled_host_store, run_replayed  # noqa: E402
from smoe.shapes import RandomSource  # noqa: E402

TINY = dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=16, vocab_size=512,
            shared_expert_intermediate_size=32, num_attention_heads=4, num_key_value_heads=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", required=True, help="folder of {workload}/b{batch}.pt decode traces")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--keep-cublas", action="store_true", help="keep cuBLAS' per-stream workspaces at close")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.keep_cublas:
        torch._C._cuda_clearCublasWorkspaces = lambda: None  # what Runtime.close did before 2026-12-01
    src = RandomSource.named("qwen2-57b-a14b-shape", device="cuda", **TINY)
    store = filled_host_store(src, "cuda")
    base = torch.cuda.memory_allocated()
    rows = []
    for i in range(args.runs):
        run_replayed(src, "smoe", Path(args.traces) / "exam" / "b1.pt", 1, device="cuda", host_store=store,
                     max_segments=1, cache_experts=600)
        rows.append({"run": i, "keep_cublas": args.keep_cublas,
                     "allocated_over_start_mib": (torch.cuda.memory_allocated() - base) / 2**20})
        print(rows[-1], flush=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
