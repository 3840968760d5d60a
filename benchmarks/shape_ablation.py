"""The SMoE ablation steps (lru -> +CE -> +CR -> +Pre -> +BA, paper Fig. 14/17) at a paper shape: decisions
replayed exactly on a CPU, TPOT modelled with the cost model fitted on that shape's H200 runs.

    python benchmarks/paper_shape.py --shape qwen2-57b-a14b-shape --tiny --slots 633 --device cpu --gpu cpu \\
        --policies lru smoe-ce smoe-ce-cr smoe-ce-cr-pre smoe hybrimoe moe-infinity --workloads exam reasoning \\
        --batches 1 3 --segments 1 --traces traces --out results/paper_shape_ablation
    python benchmarks/shape_ablation.py --replayed results/paper_shape_ablation/qwen2-57b-a14b-shape-tiny.jsonl \\
        --measured results/gpu/paper_shape_h200/qwen2-57b-a14b-shape_link24.jsonl.gz --out results/paper_shape_ablation

Why this is exact for the decisions: every policy here decides from router scores, recorded predictions and
fixed cost ratios, never from timings, so the same traces at the same number of slots give the same decisions at
toy widths on a CPU as at full width on the GPU (the H200 runs' hit rates are printed beside, as the check).
TPOT is modelled (`smoe.costmodel`): host costs fitted on the measured native-link runs, the shape's real byte
counts, the planning time the GPU host measured where the policy ran there, else this CPU's scaled to the GPU host
by the ratio measured on the policies run on both (so a contended CPU inflates those). Writes {shape}_ablation.csv: per batch, workload and policy the replayed hit rate, the H200's where
measured, and modelled TPOT at the native and the emulated link (measured TPOT beside where measured). Records
read plain (`.jsonl`, as written) or gzipped (`.jsonl.gz`, as committed).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoe.costmodel import PROFILES, MeasuredRun, ModelCosts, fit_host_costs  # noqa: E402
from smoe.files import env_file, read_jsonl  # noqa: E402

STEPS = ["lru", "smoe-ce", "smoe-ce-cr", "smoe-ce-cr-pre", "smoe"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replayed", required=True, help="paper_shape.py --tiny --slots records (CPU)")
    ap.add_argument("--measured", required=True, help="paper_shape.py records of the same shape on a GPU")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    measured_path = Path(args.measured)
    env = json.loads(env_file(measured_path).read_text())
    native = env["copy_Bps"] / 1e9
    measured = read_jsonl(measured_path)
    replayed = read_jsonl(args.replayed)
    gpu = measured[0]["row"]["gpu"]
    links = sorted({r["row"]["link_gbps"] for r in measured if r["row"]["link_gbps"]})
    costs = ModelCosts(**measured[0]["costs"])  # the real shape's bytes (the replay ran at toy widths)
    # records older than `policy_resolved` ran with the defaults of their day, stated in their env files
    runs = [MeasuredRun.from_record(r, native, env.get("policy_defaults")) for r in measured]
    here = replace(PROFILES[gpu], pcie_gbps=native)
    per_layer, fitted = fit_host_costs([r for r in runs if r.link_gbps == native], here)
    on_gpu = {(r.group, r.policy, r.link_gbps): (r, rec) for r, rec in zip(runs, measured)}
    replayed_env = env_file(args.replayed)
    old = json.loads(replayed_env.read_text()).get("policy_defaults") if replayed_env.exists() else None
    cpu = [MeasuredRun.from_record(r, native, old) for r in replayed]
    # planning time: this CPU's, scaled to the GPU host by the ratio on the policies both ran
    ratios = [on_gpu[(c.group, c.policy, native)][0].host.policy_per_layer / c.host.policy_per_layer
              for c in cpu if (c.group, c.policy, native) in on_gpu and c.policy != "all-gpu"
              and c.host.policy_per_layer > 0]
    scale = statistics.median(ratios)
    rows = []
    for c, rec in zip(cpu, replayed):
        if c.policy == "all-gpu" or c.group not in per_layer:
            continue
        timed = on_gpu.get((c.group, c.policy, native))  # planning time: the GPU host's own where it ran there
        planning = timed[0].host.policy_per_layer if timed else c.host.policy_per_layer * scale
        run = replace(c, costs=costs, host=replace(c.host, policy_per_layer=planning, cpu_per_expert=None))
        host = replace(fitted, per_layer=per_layer[c.group])
        row = {"model": measured[0]["row"]["model"], "gpu": gpu, "batch": c.group[0], "workload": c.group[1],
               "policy": c.policy, "slots": rec["memory"]["capacity"], "hit_rate": rec["metrics"]["hit_rate"],
               "substitutions": rec["metrics"]["substitutions"], "prefetches": rec["metrics"]["prefetches"]}
        for link in [native, *links]:
            name = "native" if link == native else f"link{link:g}"
            row[f"modelled_tpot_s_{name}"] = run.modelled(replace(here, pcie_gbps=link), host, own_cpu=False)
            hit = on_gpu.get((c.group, c.policy, link))
            row[f"measured_tpot_s_{name}"] = hit[0].tpot_s if hit else None
            if link == native:
                row["measured_hit_rate"] = hit[1]["metrics"]["hit_rate"] if hit else None
        rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    path = out / f"{table.model.iloc[0]}_ablation.csv"
    table.to_csv(path, index=False)
    print(f"planning time scale CPU -> {gpu}: {scale:.2f}; host costs {fitted}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
