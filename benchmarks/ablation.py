"""SMoE ablation (paper Fig. 14/17) and the eviction-window sweep, on any checkpoint and device.

    python benchmarks/ablation.py --model DIR --device cpu --cache-experts 24 --out results/ablation/NAME

Writes to --out:
  ablation.csv   lru -> smoe-ce -> smoe-ce-cr -> smoe-ce-cr-pre -> smoe (batch 1, each step's TPOT and hit
                 rate, and the change against the previous step beside the paper's -8/-20/-14/-34 % TPOT
                 and +11/+60/+12/-3 % cache-ratio steps)
  window.csv     smoe-ce's hit rate for eviction windows n = 1, 2, 4, 8, 16, 32 and none (LRU)
  policies.csv   every registered offloading policy, plus belady's ceiling from the lru run's trace
  prefetch_accuracy.csv  for the prefetching policies: share of prefetched experts that were top-score at
                 their layer (score >= (1+alpha) S_{k+1}) and that were routed there at all (paper: 82%, 95%)
Every run is repeated --repeats times in interleaved order; TPOT is the median over repeats. Hit rates and
counts are exact (identical over repeats).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from smoe.cli import run_one  # noqa: E402
from smoe.files import write_csv  # noqa: E402
from smoe.policy import policy_names  # noqa: E402
from smoe.trace_stats import prefetch_accuracy  # noqa: E402

STEPS = ["lru", "smoe-ce", "smoe-ce-cr", "smoe-ce-cr-pre", "smoe"]
PREFETCHING = {"smoe-ce-cr-pre", "smoe", "moe-infinity", "hybrimoe"}
PAPER_TPOT = {"smoe-ce": -8, "smoe-ce-cr": -20, "smoe-ce-cr-pre": -14, "smoe": -34}
PAPER_HIT = {"smoe-ce": 11, "smoe-ce-cr": 60, "smoe-ce-cr-pre": 12, "smoe": -3}
PROMPTS = [
    "The history of the Roman Empire begins with",
    "To compute the derivative of a product of two functions,",
    "Question: Is the sun a star? Answer:",
]
PAST = [  # earlier requests: moe-infinity's activation history (other prompts than the measured ones)
    "The water cycle moves water between the oceans, the air and the land:",
    "Question: What is the capital of France? Answer:",
    "Write a short poem about the sea.",
]
GROUPS = ("steps", "window", "policies", "moe-infinity")
LOOKAHEADS = (1, 2, 3, 4)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache-experts", type=int, required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=0.25)
    ap.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS,
                    help="what to run: the ablation steps, the eviction-window sweep, every other policy, "
                         "moe-infinity's parameters (lookahead, activation history)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    common = dict(model=args.model, device=args.device, batch=args.batch, max_new_tokens=args.tokens,
                  prompts=PROMPTS[: args.batch], cache_experts=args.cache_experts)
    trace = str(Path(tempfile.mkdtemp()) / "lru.trace.pt")
    run_one(policy="lru", trace=trace, **common)

    configs: list[tuple[str, str, dict]] = []
    if "steps" in args.groups:
        configs += [(p, p, {"alpha": args.alpha} if p.startswith("smoe") else {}) for p in STEPS]
    if "window" in args.groups:
        configs += [(f"smoe-ce n={n}", "smoe-ce", {"window": n}) for n in (1, 2, 4, 8, 16, 32, None)]
    if "policies" in args.groups:
        configs += [(p, p, {}) for p in policy_names() if p not in STEPS and p not in ("belady", "all-gpu")]
        configs += [("belady", "belady", {"trace": trace})]
    if "moe-infinity" in args.groups:
        past = str(Path(tempfile.mkdtemp()) / "past.trace.pt")
        run_one(policy="lru", trace=past, **(common | {"prompts": PAST[: args.batch]}))
        configs += [(f"moe-infinity la={la} history={h}", "moe-infinity",
                     {"lookahead": la} | ({"history": past} if h else {})) for la in LOOKAHEADS for h in (False, True)]
    results: dict[str, list[dict]] = {}
    accuracy: dict[str, dict] = {}
    for rep in range(args.repeats):
        for label, policy, params in configs:
            traced = rep == 0 and policy in PREFETCHING
            tr = str(Path(tempfile.mkdtemp()) / "t.pt") if traced else None
            rec = run_one(policy=policy, params={k: str(v) for k, v in params.items()}, trace=tr, **common)
            results.setdefault(label, []).append(rec["metrics"])
            if traced:
                records = torch.load(tr, weights_only=False)["records"]
                k = AutoConfig.from_pretrained(args.model).num_experts_per_tok
                accuracy[label] = prefetch_accuracy(records, args.alpha, k)

    def row(label: str) -> dict:
        ms = results[label]
        m = ms[0]
        return {"policy": label, "tpot_s": statistics.median(x["tpot_s"] for x in ms),
                "ttft_s": statistics.median(x["ttft_s"] for x in ms), "hit_rate": m["hit_rate"],
                "loads": m["loads"], "cpu_experts": m["cpu_experts"], "substitutions": m["substitutions"],
                "prefetches": m["prefetches"], "prefetch_used": m["prefetch_used"]}

    if "moe-infinity" in args.groups:
        write_csv(out / "moe_infinity.csv", [{"lookahead": la, "history": h, **row(f"moe-infinity la={la} history={h}"),
                                              **accuracy[f"moe-infinity la={la} history={h}"]}
                                             for la in LOOKAHEADS for h in (False, True)])
    if "window" in args.groups:
        write_csv(out / "window.csv", [{"window": str(n), **row(f"smoe-ce n={n}")} for n in (1, 2, 4, 8, 16, 32, None)])
    if "policies" in args.groups:
        write_csv(out / "policies.csv", [row(label) for label, _, _ in configs if label in results
                                         and not label.startswith(("smoe-ce n=", "moe-infinity la="))])
    if {"steps", "policies"} & set(args.groups):
        write_csv(out / "prefetch_accuracy.csv", [{"policy": p, **a} for p, a in accuracy.items()
                                                  if not p.startswith("moe-infinity la=")])
    if "steps" not in args.groups:
        return 0
    ablation = []
    for i, p in enumerate(STEPS):
        r = row(p)
        if i:
            prev = ablation[-1]
            r["tpot_change_pct"] = 100 * (r["tpot_s"] / prev["tpot_s"] - 1)
            r["hit_change_pct"] = 100 * (r["hit_rate"] / prev["hit_rate"] - 1) if prev["hit_rate"] else None
            r["paper_tpot_change_pct"], r["paper_hit_change_pct"] = PAPER_TPOT[p], PAPER_HIT[p]
        else:
            r.update(tpot_change_pct=None, hit_change_pct=None, paper_tpot_change_pct=None, paper_hit_change_pct=None)
        ablation.append(r)
    write_csv(out / "ablation.csv", ablation)
    for r in ablation:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
