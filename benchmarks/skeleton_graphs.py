"""The decoder layers' decode calls as CUDA graphs against op by op: same logits, time per decode step.

    python benchmarks/skeleton_graphs.py --out results/gpu/skeleton_graphs_h200.csv   # needs a CUDA device

For tiny models of several families, and for the Qwen2-57B shape with every expert resident (random weights;
`--shape-layers` of its 28 layers), one runtime per mode decodes the same prompts `--repeats` times after a
first, warm-up call (which captures the graphs): op by op (`eager`), the attention as graphs (`attention`), and
every part of the layer but the routed experts as graphs (`layer`, the runtime's default on a GPU). Written per
model, batch and graph mode: whether every forward's logits are bit-equal to the eager mode's, the largest
difference, the layers the graphs serve, the median decode step (TPOT) of both modes and the speed-up. Every
mode runs over the KV cache `--kv-cache` names (by default the runtime's: on a GPU a static one, so a layer's
whole decode attention is one graph), against eager over the same cache.
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

from smoe.runtime import KV_CACHES, Runtime, default_kv_cache  # noqa: E402
from smoe.shapes import RandomSource  # noqa: E402
from smoe.tiny import make_tiny  # noqa: E402

MODES = {"eager": dict(skeleton_graphs=False), "attention": dict(skeleton_graphs=True, block_graphs=False),
         "layer": dict(skeleton_graphs=True, block_graphs=True)}


def measure(source, label: str, batch: int, prompts, new_tokens: int, repeats: int, device: str,
            kv_cache: str) -> list[dict]:
    logits, steps, env = {}, {}, {}
    for mode, options in MODES.items():
        rt = Runtime(source, "all-gpu", device=device, cache_experts=10**6, batch=batch, kv_cache=kv_cache, **options)
        seen: list[torch.Tensor] = []
        try:
            rt.generate(prompts, new_tokens)  # warm-up; captures the graphs
            tpots = []
            for _ in range(repeats):
                seen.clear()
                res = rt.generate(prompts, new_tokens, on_logits=lambda step, x: seen.append(x.float().cpu()))
                tpots.append(res.metrics["tpot_s"])
            logits[mode], steps[mode], env[mode] = list(seen), tpots, rt.environment()
        finally:
            rt.close()
    rows = []
    for mode in ("attention", "layer"):
        eager, graphs = statistics.median(steps["eager"]), statistics.median(steps[mode])
        row = {"model": label, "batch": batch, "graphs": mode, "kv_cache": kv_cache, "new_tokens": new_tokens,
               "repeats": repeats,
               "layers_served": env[mode]["skeleton_graphs"], "block_layers_served": env[mode]["block_graphs"],
               "bit_equal": all(torch.equal(a, b) for a, b in zip(logits["eager"], logits[mode])),
               "max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(logits["eager"], logits[mode])),
               "eager_tpot_ms_p50": eager * 1e3, "graphs_tpot_ms_p50": graphs * 1e3, "speedup_p50": eager / graphs,
               "capture_s": env[mode]["skeleton_capture_s"]}
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--families", default="qwen2_moe,mixtral,olmoe")
    ap.add_argument("--shape-layers", type=int, default=28, help="layers of the Qwen2-57B shape (0: skip it)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kv-cache", nargs="+", choices=KV_CACHES,
                    help="every mode over this KV cache (static, the runtime's default on a GPU: a layer's whole "
                         "decode attention is one graph; dynamic: grown each step, its default on a CPU); both: one "
                         "after the other, each mode against eager over the same cache")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: the pieces run eagerly (a check of this script and of the pieces, not a measurement)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("needs a CUDA device (or --device cpu)")
    args.kv_cache = args.kv_cache or [default_kv_cache(torch.device(args.device))]
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for batch in args.batches:
        prompts = [[1 + i, 7, 9, 11 + i][: 2 + i % 3] for i in range(batch)]  # different lengths: padding masks
        for kv in args.kv_cache:
            for fam in args.families.split(","):
                rows += measure(str(make_tiny(fam, tmp / fam)), fam, batch, prompts, 16, args.repeats, args.device, kv)
            if args.shape_layers:
                source = RandomSource.named("qwen2-57b-a14b-shape", device=args.device,
                                            num_hidden_layers=args.shape_layers, num_experts=8, num_experts_per_tok=8)
                rows += measure(source, f"qwen2-57b-a14b-shape-{args.shape_layers}l-8e", batch, prompts, 32,
                                args.repeats, args.device, kv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
