"""The working tree's decisions and planning time against a git revision's, on the same CPU routing replay.

For changes that should make the policies faster without changing what they decide: both sides replay the same
decode traces through `paper_shape.py --tiny --device cpu` at the same slot count (the shape's layers, experts
and top-k at toy widths; the policies' decisions do not depend on the widths), alternating old and new runs so
that a slow stretch of a shared machine hits both. Every run's decode and prefill counters (hits, uses, loads,
CPU experts, substitutions, skips, prefetches and their use) must be equal between the two; the planning time
per decode step (`policy_time_s`) is reported side by side. The revision is checked out in a temporary git
worktree.

    python benchmarks/decisions_vs_commit.py --rev 89375c9 --traces traces --repeats 3 \
        --out results/cpu/decisions_vs_commit_89375c9.csv
Exits 1 when any run decides differently.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
COUNTERS = ("hits", "uses", "loads", "cpu_experts", "substitutions", "skips", "prefetches", "prefetch_used",
            "prefetch_in_topk")
POLICIES = ["all-gpu", "lru", "lfu", "fifo", "hybrimoe", "moe-infinity", "smoe-ce-cr", "smoe", "skip"]


def replay(tree: Path, args, batch: int, out: Path) -> dict:
    """One paper_shape.py run in `tree` -> {(policy, workload, batch): (counters, policy ms per decode step)}."""
    cmd = [sys.executable, "benchmarks/paper_shape.py", "--shape", args.shape, "--tiny", "--device", "cpu",
           "--traces", str(Path(args.traces).resolve()), "--slots", str(args.slots), "--batches", str(batch),
           "--segments", "1", "--workloads", *args.workloads, "--policies", *args.policies, "--out", str(out)]
    env = os.environ | {"PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = {}
    for path in out.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            m, steps = r["metrics"], r["metrics"]["decode_steps"]
            counters = {f"{phase}.{c}": m[phase][c] for phase in ("prefill", "decode") for c in COUNTERS}
            key = (r["row"]["policy"], r["row"]["workload"], r["row"]["batch"])
            runs[key] = (counters, m["decode"]["policy_time_s"] / steps * 1e3)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", required=True, help="git revision to compare the working tree with")
    ap.add_argument("--traces", required=True, help="folder of {workload}/b{batch}.pt decode traces")
    ap.add_argument("--shape", default="qwen2-57b-a14b-shape")
    ap.add_argument("--slots", type=int, default=625, help="expert slots (625: Qwen2-57B shape at 48 GB, batch 1)")
    ap.add_argument("--policies", nargs="+", default=POLICIES)
    ap.add_argument("--workloads", nargs="+", default=["exam", "reasoning"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 3])
    ap.add_argument("--repeats", type=int, default=1, help="runs per side (planning time: the median)")
    ap.add_argument("--out", required=True, help="CSV: one row per run setting")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), args.rev], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            sides = {"old": {}, "new": {}}
            jobs = [(rep, b, side) for rep in range(args.repeats) for b in args.batches for side in ("old", "new")]
            for rep, b, side in tqdm(jobs, desc="replays", unit="run"):
                tree = old_tree if side == "old" else ROOT
                runs = replay(tree, args, b, Path(tmp) / f"{side}_{rep}_b{b}")
                for key, (counters, ms) in runs.items():
                    sides[side].setdefault(key, (counters, []))[1].append(ms)
                    if sides[side][key][0] != counters:
                        raise SystemExit(f"{side} side decided differently across repeats at {key}")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, check=False)

    rows = []
    for key in sorted(sides["old"]):
        (c_old, ms_old), (c_new, ms_new) = sides["old"][key], sides["new"].get(key, (None, [float("nan")]))
        differs = [c for c in c_old if c_new is None or c_old[c] != c_new[c]]
        rows.append(dict(zip(("policy", "workload", "batch"), key), same_decisions=not differs,
                         differing=" ".join(differs), old_policy_ms_per_step=statistics.median(ms_old),
                         new_policy_ms_per_step=statistics.median(ms_new), rev=args.rev))
    table = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.to_string(index=False))
    if not table.same_decisions.all():
        raise SystemExit(1)


if __name__ == "__main__":
    main()
