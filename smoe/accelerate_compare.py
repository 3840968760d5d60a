"""Hugging Face accelerate offloading against the runtime's policies at the same budget: the table behind the issue's
"at least 20x faster than accelerate" (rule `accelerate_table`, `results/tables/accelerate_gpu.csv`).

Where it sits: reads what two benchmarks wrote on the GPU machine and touches no device. `accelerate_offload.py`
records accelerate's TTFT and TPOT per shape, GPU budget (GiB) and batch; `paper_shape.py`'s runs, tabled as
`perf_gpu.csv`, give every policy's TPOT. A runtime budget matches an accelerate budget within `BUDGET_TOLERANCE`
of it (Qwen2-57B's accelerate run had 44 GiB, the runtime 40 and 48), on the same GPU model. Only runs at the
runtime's current defaults count (`DEFAULTS`: layer graphs, the slot kernel (op by op or as graphs), the static KV
cache, every A/B option at its default), and only on the emulated link, the paper's PCIe, slower than the H200's own
link that accelerate copied over. The floor (all-gpu) counts in the folders where a matched run was measured: it has
no budget of its own.
"""
from __future__ import annotations

import pandas as pd

from .hardware import gpu_model
from .policy import OFFLOADING_BASELINES

BUDGET_TOLERANCE = 0.10  # a runtime budget within 10% of accelerate's is "the same budget"
POLICIES = ["all-gpu", "smoe", *OFFLOADING_BASELINES]
# the runtime's current defaults on the GPU, as perf_gpu.csv's mode columns name them (A/B rows differ in one)
# (the slot kernel counts op by op or replayed as a graph: the same products, the graphs' faster, 2026-12-06)
DEFAULTS = {"skeleton": {"layer"}, "grouped": {"slots", "graphs"}, "kv_cache": {"static"}, "hits": {"after-plan"},
            "prefetch_at": {"layer"}}
LABELS = r"@[a-z-]+$"  # an A/B's label on a policy name (`smoe@hits-after-plan`); its modes are in the columns


def accelerate_runs(records: list[dict]) -> pd.DataFrame:
    """accelerate_offload.py records -> one row per (model, budget, batch): accelerate's TTFT and TPOT, and the GPU it
    ran on (`gpu`, as perf_gpu.csv names it)."""
    rows = [{"model": r["shape"], "gpu": gpu_model(r["device_name"]), "accelerate_budget_gib": r["budget_gb"],
             "batch": run["batch"], "accelerate_ttft_s": run["ttft_s"], "accelerate_tpot_s": run["tpot_s"],
             "accelerate_steps": len(run["step_s"]), "accelerate_modules_on_gpu": r["modules_on_gpu"]}
            for r in records for run in r["runs"]]
    return pd.DataFrame(rows)


def compare(records: list[dict], perf: pd.DataFrame) -> pd.DataFrame:
    """accelerate records and perf_gpu.csv's rows -> one row per (model, accelerate budget, runtime budget, batch,
    policy) with the policy's TPOT over its matched runs (median, min, max; workloads and rounds together) and
    accelerate's TPOT as a multiple of it: `speedup_median` at the median, `speedup_min` at the slowest run."""
    acc = accelerate_runs(records)
    runs = perf[perf.measured.astype(bool)].copy()
    runs["policy"] = runs.policy.str.replace(LABELS, "", regex=True)
    for column, values in DEFAULTS.items():
        runs = runs[runs[column].isin(values)]
    runs["folder"] = runs.source.str.split("/").str[0]
    offloaded = runs[runs.emulated.astype(bool) & runs.policy.isin(POLICIES)]
    floors = runs[runs.policy == "all-gpu"]
    out = []
    for a in acc.itertuples():
        near = (offloaded.budget_gb - a.accelerate_budget_gib).abs() <= BUDGET_TOLERANCE * a.accelerate_budget_gib
        matched = offloaded[(offloaded.model == a.model) & (offloaded.gpu == a.gpu) & (offloaded.batch == a.batch)
                            & near]
        for budget, group in matched.groupby("budget_gb"):
            floor = floors[(floors.model == a.model) & (floors.gpu == a.gpu) & (floors.batch == a.batch)
                           & floors.folder.isin(group.folder)]
            for policy, g in pd.concat([floor, group]).groupby("policy", sort=False):
                t = g.tpot_s
                out.append({**a._asdict(), "budget_gb": budget, "policy": policy, "runs": len(g),
                            "workloads": " ".join(sorted(set(g.workload))), "tpot_median_s": t.median(),
                            "tpot_min_s": t.min(), "tpot_max_s": t.max(),
                            "speedup_median": a.accelerate_tpot_s / t.median(),
                            "speedup_min": a.accelerate_tpot_s / t.max()})
    columns = ["model", "gpu", "accelerate_budget_gib", "budget_gb", "batch", "policy", "runs", "workloads",
               "tpot_median_s", "tpot_min_s", "tpot_max_s", "accelerate_tpot_s", "speedup_median", "speedup_min",
               "accelerate_ttft_s", "accelerate_steps", "accelerate_modules_on_gpu"]
    table = pd.DataFrame(out, columns=columns)
    order = {p: i for i, p in enumerate(POLICIES)}
    return table.sort_values(["model", "budget_gb", "batch", "policy"],
                             key=lambda c: c.map(order) if c.name == "policy" else c, ignore_index=True)
