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


def rows(record: dict, model: str | None = None) -> list[dict]:
    """`model` names the rows (default: the checkpoint folder's name); the DAG gives a dense teacher's rows
    the name of the MoE made from it, so the two sit side by side."""
    p = record["params"]
    settings = dict(s.split("=", 1) for s in p.get("set") or [])
    if p.get("cache_experts"):
        budget = f"{p['cache_experts']} slots"
    elif p.get("budget_gb"):
        budget = f"{p['budget_gb']} GiB"
    else:
        budget = "all"
    takes_alpha = p["policy"] not in ("dense", "all-gpu") and p["policy"] in alpha_policies()
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
            out.append({"model": model or Path(p["model"]).name, "task": task, "policy": p["policy"], "alpha": alpha,
                        "budget": budget, "n_docs": docs, "metric": metric if flt == "none" else key,
                        "value": value, "stderr": err if isinstance(err, (int, float)) else None})
    return out


def alpha_policies() -> set[str]:
    from .policy import make_policy, policy_names

    return {n for n in policy_names() if hasattr(make_policy(n), "alpha")}


def table(paths: list[str | Path], names: list[str] | None = None) -> pd.DataFrame:
    """Records -> the long table; `names`, if given, names each record's rows (see `rows`)."""
    names = names or [None] * len(paths)
    recs = [json.loads(Path(p).read_text()) for p in paths]
    return pd.DataFrame([r for rec, name in zip(recs, names) for r in rows(rec, name)], columns=COLUMNS)


# lm-eval's headline metric of each local task (with its filter where it has one, as lm-eval names it) and
# its value for a random guess (None: lower is better)
HEADLINE = {
    "smoe_hellaswag": ("acc_norm", 0.25), "smoe_piqa": ("acc_norm", 0.5), "smoe_arc_easy": ("acc", 0.25),
    "smoe_arc_challenge": ("acc_norm", 0.25), "smoe_winogrande": ("acc", 0.5), "smoe_boolq": ("acc", 0.5),
    "smoe_sciq": ("acc", 0.25), "smoe_openbookqa": ("acc_norm", 0.25), "smoe_mmlu": ("acc", 0.25),
    "smoe_lambada": ("acc", 0.0), "smoe_gsm8k": ("exact_match,flexible-extract", 0.0),
    "smoe_triviaqa": ("exact_match,remove_whitespace", 0.0),
    "smoe_shakespeare": ("word_perplexity", None),
}


def column(row) -> str:
    """The setting a row belongs to, as a table column: dense, moe (every expert computed: the runtime's
    all-gpu, or lm-eval's HF model on the MoE checkpoint, `eval --policy hf`), policy@alpha."""
    if row["policy"] == "dense":
        return "dense"
    if row["policy"] in ("all-gpu", "hf"):
        return "moe"
    return f"{row['policy']}@{row['alpha']:g}" if pd.notna(row["alpha"]) else row["policy"]


def headline(df: pd.DataFrame) -> pd.DataFrame:
    """One value per (model, task, setting): the task's headline metric; column `setting` as `column`."""
    keep = df[[HEADLINE.get(t, (None,))[0] == m for t, m in zip(df["task"], df["metric"])]].copy()
    keep["setting"] = keep.apply(column, axis=1)
    return keep


def pivot(df: pd.DataFrame, settings: list[str] | None = None) -> pd.DataFrame:
    """Headline values, one row per (model, task), one column per setting, plus each model's mean over
    the accuracy tasks (perplexities left out of the mean)."""
    h = headline(df)
    t = h.pivot_table(index=["model", "task"], columns="setting", values="value", aggfunc="first")
    if settings is not None:
        t = t[[s for s in settings if s in t.columns]]
    acc = t[[HEADLINE[task][1] is not None for _, task in t.index]]
    means = acc.groupby(level="model").mean()
    means.index = pd.MultiIndex.from_tuples([(m, "mean") for m in means.index], names=t.index.names)
    return pd.concat([t, means])


def margin_kept(df: pd.DataFrame, setting: str = "moe", floor: float = 0.05) -> dict:
    """Share of the dense model's margin over chance that `setting` keeps: sum over tasks of (setting -
    chance) / sum of (dense - chance), over the tasks where the dense model is more than `floor` above
    chance (tasks at chance carry no signal). Per model that has a dense row."""
    t = pivot(df)
    out = {}
    for model, sub in t.groupby(level="model"):
        sub = sub.droplevel("model").drop(index="mean", errors="ignore")
        if "dense" not in sub or setting not in sub:
            continue
        chance = pd.Series({task: HEADLINE[task][1] for task in sub.index})
        ok = chance.notna() & sub[setting].notna() & (sub["dense"] - chance > floor)
        if ok.any():
            kept = (sub[setting][ok] - chance[ok]).sum() / (sub["dense"][ok] - chance[ok]).sum()
            out[model] = {"setting": setting, "kept": float(kept), "tasks": sorted(sub.index[ok])}
    return out
