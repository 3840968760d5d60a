"""Decode's grouped expert product on the GPU: the Triton kernel that reads the experts in place from their slots
(`smoe.grouped_kernel`, the runtime's default) against gathering them out of the slots first and running cuBLAS'
batched product on the copy (the runtime's earlier path, `grouped_experts='gather'`), and against cuBLAS on n
experts that already lie side by side (no gather: what the batched product alone costs).

For each paper shape, n resident experts of a layer (8: top-k at batch 1 on Qwen2-57B; 24: top-k x 3) at batch
1 and 3, each way is timed with CUDA events (median of --reps calls, the three ways interleaved call by call),
and reported as time and as the experts' bytes over that time (the rate a decode step reads weights at). The
kernel's output is checked against the gathered product in bfloat16 (max error over the output's scale).
--sweep first times the kernel's tilings on the Qwen2-57B shape and reports the fastest (a row each).

    python benchmarks/grouped_kernel.py --out results/gpu/grouped_kernel_h200.csv [--sweep]
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoe.checkpoint import ExpertShape  # noqa: E402
from smoe.grouped_kernel import CONFIG, slot_grouped_forward  # noqa: E402
from smoe.shapes import SHAPES  # noqa: E402
from smoe.store import grouped_forward  # noqa: E402

SLOTS = 64  # a pool of this many slots, the n experts drawn from it at random


def timed(fns: dict, reps: int) -> dict:
    """Median milliseconds per call of each fn, the fns interleaved call by call (a slow stretch hits all)."""
    for f in fns.values():  # compile and warm
        f()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            f()
            end.record()
            end.synchronize()
            times[k].append(start.elapsed_time(end))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--sweep", action="store_true", help="time the kernel's tilings first (Qwen2-57B shape)")
    args = ap.parse_args()
    dev = torch.device("cuda")
    act = F.silu
    rows = []
    for shape_name in ("qwen2-57b-a14b-shape", "deepseek-moe-16b-shape", "xverse-moe-a4.2b-shape"):
        cfg = SHAPES[shape_name]
        shape = ExpertShape(hidden=cfg["hidden_size"], intermediate=cfg["moe_intermediate_size"])
        expert_bytes = shape.numel * 2
        gen = torch.Generator(device=dev).manual_seed(0)
        data = (torch.randn(SLOTS, shape.numel, generator=gen, device=dev) * 0.02).to(torch.bfloat16)  # [C,3IH]
        for n, T in itertools.product((8, 24), (1, 3)):
            slots = torch.randperm(SLOTS, generator=gen, device=dev)[:n]  # [n]
            x = torch.randn(T, shape.hidden, generator=gen, device=dev).to(torch.bfloat16)  # [T,H]
            side_by_side = data[:n]  # n experts already contiguous: the batched product with no gather
            configs = [CONFIG]
            if args.sweep and shape_name.startswith("qwen2"):
                configs = [{"block_r": r, "block_k": k, "num_warps": w, "num_stages": s}
                           for r, k, w, s in itertools.product((32, 64, 128), (64, 128, 256), (4, 8), (3, 4, 5))]
            want = grouped_forward(x, data.index_select(0, slots), shape, act).float()
            for config in configs:
                try:
                    got = slot_grouped_forward(x, data, slots, shape, act, config).float()
                except Exception as e:  # a tiling the compiler refuses (e.g. too much shared memory): a row says so
                    rows.append({"shape": shape_name, "experts": n, "batch": T, **config, "error": repr(e)[:200]})
                    continue
                err = ((got - want).abs().max() / want.abs().max()).item()
                ms = timed({
                    "slots_kernel": lambda: slot_grouped_forward(x, data, slots, shape, act, config),
                    "gather_then_bmm": lambda: grouped_forward(x, data.index_select(0, slots), shape, act),
                    "bmm_no_gather": lambda: grouped_forward(x, side_by_side, shape, act),
                }, args.reps)
                row = {"shape": shape_name, "experts": n, "batch": T, **config, "rel_err_vs_gather": err,
                       "expert_mb": expert_bytes / 1e6}
                for k, v in ms.items():
                    row[f"{k}_ms"] = v
                    row[f"{k}_GBps"] = n * expert_bytes / (v * 1e-3) / 1e9
                row["gather_over_kernel"] = ms["gather_then_bmm"] / ms["slots_kernel"]
                rows.append(row)
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        del data
        torch.cuda.empty_cache()
    df = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    if args.sweep and "slots_kernel_ms" in df:
        best = df[df["shape"].str.startswith("qwen2")].groupby(["block_r", "block_k", "num_warps", "num_stages"])[
            "slots_kernel_ms"].sum().sort_values()
        print("fastest tilings (sum of ms over the qwen2 cases):\n", best.head(8).to_string(), flush=True)


if __name__ == "__main__":
    main()
