"""The predictor's decode passes as CUDA graphs against op by op: same predictions, host time per pass.

    python benchmarks/predictor_graphs.py --out results/gpu/predictor_graphs_h200.csv   # needs a CUDA device

For tiny models of several families, and for the Qwen2-57B shape cut to a few layers and experts (random
weights; the predictor's cost does not depend on the expert count), every expert is resident and a probe
policy asks, at every decode layer, for the next layer's prediction with attention, without, and a later
layer's router (HybriMoE's look-ahead). It runs once with `predictor_graphs` on and once off, on the same
prompts, and writes per model and pass kind: the largest difference between the two runs' predictions, and the
host time per pass of each (launching the pass and waiting for its scores).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoe.files import write_csv  # noqa: E402
from smoe.plan import Action, Plan  # noqa: E402
from smoe.policy import ExpertPolicy, register_policy  # noqa: E402
from smoe.runtime import Runtime  # noqa: E402
from smoe.shapes import RandomSource  # noqa: E402
from smoe.tiny import make_tiny  # noqa: E402

KINDS = ("attention", "no-attention", "lookahead")


@register_policy("bench-predict-probe")
class PredictProbe(ExpertPolicy):
    """Every expert resident; at every decode layer, the three kinds of prediction, each timed."""

    def setup(self, model, capacity):
        self.predicted: dict = {}  # (generate call, step, layer, kind) -> scores [T,E] on the CPU
        self.seconds = {k: [] for k in KINDS}
        self.call = 0
        return [(layer, e) for layer in model.moe_layers for e in range(model.num_experts)]

    def plan(self, view):
        return Plan.per_expert(view, {e: Action.HIT for e in view.needed()})

    def prefetch(self, view, ctx):
        if view.phase != "decode" or ctx.next_layer is None:
            return None
        runs = {"attention": lambda: ctx.predict(attention=True), "no-attention": lambda: ctx.predict(attention=False),
                "lookahead": lambda: ctx.gate_scores([ctx.next_layer])[0]}
        for kind, run in runs.items():
            t0 = time.perf_counter()
            self.predicted[(self.call, view.step, view.layer, kind)] = run()
            self.seconds[kind].append(time.perf_counter() - t0)
        return None


def measure(source, label: str, batch: int, prompts, new_tokens: int, repeats: int) -> list[dict]:
    out = {}
    for graphs in (False, True):
        rt = Runtime(source, "bench-predict-probe", device="cuda", cache_experts=10**6, batch=batch,
                     predictor_graphs=graphs)
        try:
            for call in range(repeats + 1):  # the first call captures the graphs (and warms the eager path)
                rt.policy.call = call
                rt.generate(prompts, new_tokens)
            capture = rt.environment()["predictor_capture_s"]
            out[graphs] = (rt.policy, capture)
        finally:
            rt.close()
    (eager, _), (graphed, capture_s) = out[False], out[True]
    rows = []
    for kind in KINDS:
        keys = [k for k in eager.predicted if k[3] == kind]
        diff = max(float((eager.predicted[k] - graphed.predicted[k]).abs().max()) for k in keys)
        equal = all(torch.equal(eager.predicted[k], graphed.predicted[k]) for k in keys)
        timed = lambda pol: sorted(pol.seconds[kind][len(pol.seconds[kind]) // (repeats + 1):])  # noqa: E731
        e, g = timed(eager), timed(graphed)
        rows.append({"model": label, "batch": batch, "kind": kind, "passes": len(g), "bit_equal": equal,
                     "max_abs_diff": diff, "eager_ms_p50": e[len(e) // 2] * 1e3, "graphs_ms_p50": g[len(g) // 2] * 1e3,
                     "speedup_p50": e[len(e) // 2] / g[len(g) // 2], "capture_s": capture_s})
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--families", default="qwen2_moe,mixtral,olmoe,deepseek_v3,smolmoe")
    ap.add_argument("--shape-layers", type=int, default=4, help="layers of the Qwen2-57B shape (0: skip it)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 3])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        ap.error("needs a CUDA device")
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for batch in args.batches:
        prompts = [[1 + i, 7, 9, 11 + i][: 2 + i % 3] for i in range(batch)]  # different lengths: padding masks
        for fam in args.families.split(","):
            rows += measure(str(make_tiny(fam, tmp / fam)), fam, batch, prompts, 8, 2)
        if args.shape_layers:
            source = RandomSource.named("qwen2-57b-a14b-shape", device="cuda", num_hidden_layers=args.shape_layers,
                                        num_experts=8, num_experts_per_tok=2)
            rows += measure(source, f"qwen2-57b-a14b-shape-{args.shape_layers}l-8e", batch, prompts, 16, 2)
    write_csv(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
