"""What the GPU figures (rule `figure_gpu`, the Fig. 11-13 analogues) draw from `perf_gpu.csv`: the measured rows at
the runtime's defaults, one per run, each in the panel of its setting, and the all-GPU floor each panel is drawn
against.

Where it sits: `workflow/scripts/figure_gpu.py` draws what `drawn` and `panel_floors` return; neither touches a
device or a file. A setting is a shape, a budget, a batch and the GPU the rows were timed on, so runs on two GPUs
never share a panel. A run measured in several folders of `gpu_results` is drawn from the folder listed first. The
floor has no budget (it holds every expert): a panel takes the floor of its shape, batch, GPU and workload, from the
folder listed first that ran one. A panel whose runs come from more than one folder says how many (`panel_folders`).
"""
from __future__ import annotations

import pandas as pd

# the labels of an A/B's other side, whose rows are left to the tables (`@eager-skeleton`, `@gather-experts`, ...)
VARIANTS = "@eager-|@attention-|@gather-|@slots-|@hf-|@static-kv|@dynamic-kv"
# the labels of A/B rows that ran the runtime's order, drawn under their policy's name
RUNTIME_ORDER = "@in-layer-prefetch|@hits-after-plan"
RUN = ["gpu", "model", "budget_gb", "batch", "workload", "policy", "link_gbps"]  # one bar each
FLOOR = ["gpu", "model", "batch", "workload"]  # what a floor is shared by: every budget of the setting


def setting(df: pd.DataFrame) -> pd.Series:
    """A panel's row: shape, budget, batch and the GPU it ran on ('deepseek-moe-16b-shape @12 GB, b3, H100')."""
    return (df.model + " @" + df.budget_gb.map(lambda b: "" if b != b else f"{b:g} GB") + ", b" + df.batch.astype(str)
            + ", " + df.gpu.str.upper())


def drawn(perf: pd.DataFrame) -> pd.DataFrame:
    """perf_gpu.csv -> the rows the figures draw: measured, at the runtime's defaults (no A/B variant, no option
    measured and taken out again), one per run from the folder listed first, with `folder` and `setting` columns."""
    variant = perf.policy.str.contains(VARIANTS, regex=True)
    taken_out = perf.prefetch_at.ne("layer") | perf.hits.ne("after-plan")  # options measured and removed again
    df = perf[perf.measured.astype(bool) & ~variant & ~taken_out].copy()
    df["policy"] = df.policy.str.replace(RUNTIME_ORDER, "", regex=True)
    df["folder"] = df.source.str.split("/").str[0]
    first = {f: i for i, f in enumerate(df.folder.drop_duplicates())}  # the table keeps the config's folder order
    df = df.assign(rank=df.folder.map(first)).sort_values("rank", kind="stable").drop_duplicates(RUN, keep="first")
    return df.drop(columns="rank").assign(setting=setting(df))


def panel_floors(rows: pd.DataFrame) -> pd.Series:
    """`drawn` rows (one floor per FLOOR key) -> the all-GPU floor's TPOT (s) of every panel that has one, indexed by
    (setting, workload)."""
    floors = rows[rows.policy == "all-gpu"][[*FLOOR, "tpot_s"]]
    panels = rows[rows.policy != "all-gpu"].drop_duplicates(["setting", "workload"])[["setting", *FLOOR]]
    return panels.merge(floors, on=FLOOR).set_index(["setting", "workload"]).tpot_s


def panel_folders(rows: pd.DataFrame) -> pd.Series:
    """`drawn` rows -> how many folders of `gpu_results` a panel's bars and its floor come from, indexed by (setting,
    workload). More than one: the panel's runs were not all timed side by side (a folder holds one campaign's
    process or processes for its settings), so their ratios carry the machines' differences too; the figures say so
    in the panel."""
    bars = rows[rows.policy != "all-gpu"][["setting", *FLOOR, "folder"]]
    floors = rows[rows.policy == "all-gpu"][[*FLOOR, "folder"]]
    panels = bars.drop_duplicates(["setting", "workload"])[["setting", *FLOOR]].merge(floors, on=FLOOR)
    both = pd.concat([bars[["setting", "workload", "folder"]], panels[["setting", "workload", "folder"]]])
    return both.groupby(["setting", "workload"]).folder.nunique()
