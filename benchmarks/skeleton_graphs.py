"""The decoder layers' decode attention as CUDA graphs against op by op: same logits, time per decode step.

    python benchmarks/skeleton_graphs.py --out results/gpu/skeleton_graphs_h200.csv   # needs a CUDA device

For tiny models of several families, and for the Qwen2-57B shape with every expert resident (random weights;
`--shape-layers` of its 28 layers), one runtime per mode (`skeleton_graphs` on and off) decodes the same prompts
`--repeats` times after a first, warm-up call (which captures the graphs). Written per model and batch: whether
every forward's logits are bit-equal between the two modes, the largest difference, the layers the graphs serve,
and the median and mean decode step (TPOT) of each mode.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoe.runtime import Runtime  # noqa: E402
from smoe.shapes import RandomSource  # noqa: E402
from smoe.tiny import make_tiny  # noqa: E402


def measure(source, label: str, batch: int, prompts, new_tokens: int, repeats: int, device: str) -> dict:
    logits, steps, served, capture = {}, {}, {}, {}
    for graphs in (False, True):
        rt = Runtime(source, "all-gpu", device=device, cache_experts=10**6, batch=batch, skeleton_graphs=graphs)
        seen: list[torch.Tensor] = []
        try:
            rt.generate(prompts, new_tokens)  # warm-up; captures the graphs
            tpots = []
            for _ in range(repeats):
                seen.clear()
                res = rt.generate(prompts, new_tokens, on_logits=lambda step, x: seen.append(x.float().cpu()))
                tpots.append(res.metrics["tpot_s"])
            env = rt.environment()
            logits[graphs], steps[graphs] = list(seen), tpots
            served[graphs], capture[graphs] = env["skeleton_graphs"], env["skeleton_capture_s"]
        finally:
            rt.close()
    equal = all(torch.equal(a, b) for a, b in zip(logits[False], logits[True]))
    diff = max(float((a - b).abs().max()) for a, b in zip(logits[False], logits[True]))
    row = {"model": label, "batch": batch, "new_tokens": new_tokens, "repeats": repeats,
           "layers_served": served[True], "bit_equal": equal, "max_abs_diff": diff,
           "eager_tpot_ms_p50": statistics.median(steps[False]) * 1e3,
           "graphs_tpot_ms_p50": statistics.median(steps[True]) * 1e3,
           "speedup_p50": statistics.median(steps[False]) / statistics.median(steps[True]),
           "capture_s": capture[True]}
    print(row, flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--families", default="qwen2_moe,mixtral,olmoe")
    ap.add_argument("--shape-layers", type=int, default=28, help="layers of the Qwen2-57B shape (0: skip it)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: the pieces run eagerly (a check of this script and of the pieces, not a measurement)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("needs a CUDA device (or --device cpu)")
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for batch in args.batches:
        prompts = [[1 + i, 7, 9, 11 + i][: 2 + i % 3] for i in range(batch)]  # different lengths: padding masks
        for fam in args.families.split(","):
            rows.append(measure(str(make_tiny(fam, tmp / fam)), fam, batch, prompts, 16, args.repeats, args.device))
        if args.shape_layers:
            source = RandomSource.named("qwen2-57b-a14b-shape", device=args.device, num_hidden_layers=args.shape_layers,
                                        num_experts=8, num_experts_per_tok=8)
            rows.append(measure(source, f"qwen2-57b-a14b-shape-{args.shape_layers}l-8e", batch, prompts, 32,
                                args.repeats, args.device))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
