"""Snakemake script of rule `perf_table`: one row per run JSON -> results/tables/perf.csv."""
import json

import pandas as pd

sm = snakemake  # noqa: F821
rows = []
for path in sm.input:
    rec = json.load(open(path))
    p, m = rec["params"], rec["metrics"]
    rows.append({
        # every row so far is a run timed on the hardware named in `gpu`; cost-model rows will be measured=False
        "model": p["model_name"], "gpu": p["gpu"], "measured": True,
        "budget": p["budget"], "budget_gb": p["budget_gb"], "cache_experts": rec["memory"]["capacity"],
        "policy": p["policy"], "batch": p["batch"], "workload": p["workload"], "prompts": len(p["prompts"]),
        "ttft_s": m["ttft_s"], "tpot_s": m["tpot_s"], "tpot_p50_s": m["tpot_p50_s"], "tpot_p90_s": m["tpot_p90_s"],
        "hit_rate": m["hit_rate"], "loads": m["loads"], "bytes_h2d": m["bytes_h2d"], "cpu_experts": m["cpu_experts"],
        "substitutions": m["substitutions"], "skips": m["skips"], "prefetches": m["prefetches"],
        "prefetch_used": m["prefetch_used"], "device": rec["env"]["device_name"],
    })
pd.DataFrame(rows).sort_values(["model", "gpu", "budget", "policy", "workload", "batch"]).to_csv(sm.output[0], index=False)
