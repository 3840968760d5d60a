"""The accuracy table: `smoe eval` records -> one row per (model, task, policy, alpha, budget, metric).

Where it sits: after `python -m smoe eval --out` runs (the DAG's accuracy rules, or by hand); writes
`results/tables/accuracy.csv` with columns model, task, policy, alpha, budget, n_docs, metric, value, stderr.
`budget` is the expert slots (`cache_experts`) or GiB (`budget_gb`) the run had, `all` when every expert
was resident; `alpha` is empty for policies without one.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

COLUMNS = ["model", "task", "policy", "alpha", "budget", "n_docs", "metric", "value", "stderr"]


def rows(record: dict) -> list[dict]:
    p = record["params"]
    settings = dict(s.split("=", 1) for s in p.get("set") or [])
    if p.get("cache_experts"):
        budget = f"{p['cache_experts']} slots"
    elif p.get("budget_gb"):
        budget = f"{p['budget_gb']} GiB"
    else:
        budget = "all"
    takes_alpha = p["policy"] not in ("dense", "all-gpu") and p["policy"] in _alpha_policies()
    alpha = float(settings.get("alpha", 0.25)) if takes_alpha else None
    n = record.get("n_samples") or {}
    out = []
    for task, metrics in record["results"].items():
        docs = n.get(task, {}).get("effective", p.get("limit"))
        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or "_stderr" in key or key.startswith(("alias", "sample_len")):
                continue
            metric, _, flt = key.partition(",")
            err = metrics.get(f"{metric}_stderr,{flt}")
            out.append({"model": Path(p["model"]).name, "task": task, "policy": p["policy"], "alpha": alpha,
                        "budget": budget, "n_docs": docs, "metric": metric if flt == "none" else key,
                        "value": value, "stderr": err if isinstance(err, (int, float)) else None})
    return out


def _alpha_policies() -> set[str]:
    from .policy import make_policy, policy_names

    return {n for n in policy_names() if hasattr(make_policy(n), "alpha")}


def table(paths: list[str | Path]) -> pd.DataFrame:
    recs = [json.loads(Path(p).read_text()) for p in paths]
    return pd.DataFrame([r for rec in recs for r in rows(rec)], columns=COLUMNS)
