"""Snakemake script of rule `figure`: the paper's figures from results/tables/perf.csv alone.

  fig11_tpot      TPOT per workload and policy (paper Fig. 11/12), one panel per batch size and budget
  fig12_hit_rate  decode hit rate per policy, averaged over workloads (paper Fig. 12/13)
  fig13_ttft      TTFT at batch 1 per policy, averaged over workloads (paper Fig. 13/16)
  fig14_ablation  the ablation steps lru -> smoe: TPOT bars and hit rate (paper Fig. 14/17), batch 1
Each figure says in its title on what hardware its times were measured.
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

sm = snakemake  # noqa: F821
df = pd.read_csv(sm.input[0])
fig = sm.wildcards.fig
out = Path(sm.output[0])
where = ", ".join(sorted(f"{g} ({'measured' if m else 'modelled'})" for g, m in df[["gpu", "measured"]].drop_duplicates().values))
sns.set_theme(style="whitegrid", context="paper")
STEPS = ["lru", "smoe-ce", "smoe-ce-cr", "smoe-ce-cr-pre", "smoe"]

if fig == "fig11_tpot":
    d = df[df.policy != "all-gpu"]
    g = sns.catplot(data=d, x="workload", y="tpot_s", hue="policy", col="batch", row="budget", kind="bar",
                    height=3, aspect=2.2, errorbar=None)
    g.set_axis_labels("workload", "TPOT (s)")
    g.figure.suptitle(f"TPOT per workload ({where})", y=1.02)
elif fig == "fig12_hit_rate":
    d = df[df.policy != "all-gpu"].groupby(["model", "budget", "batch", "policy"], as_index=False)["hit_rate"].mean()
    g = sns.catplot(data=d, x="policy", y="hit_rate", col="batch", row="budget", kind="bar", height=3, aspect=2.5)
    for ax in g.axes.flat:
        ax.tick_params(axis="x", rotation=60, labelbottom=True)
    g.tight_layout()
    g.figure.suptitle("decode hit rate, mean over workloads", y=1.02)
elif fig == "fig13_ttft":
    d = df[df.batch == df.batch.min()].groupby(["model", "budget", "policy"], as_index=False)["ttft_s"].mean()
    g = sns.catplot(data=d, x="policy", y="ttft_s", col="budget", kind="bar", height=3, aspect=2.5)
    for ax in g.axes.flat:
        ax.tick_params(axis="x", rotation=60, labelbottom=True)
    g.tight_layout()
    g.figure.suptitle(f"TTFT at batch {df.batch.min()}, mean over workloads ({where})", y=1.02)
elif fig == "fig14_ablation":
    d = df[(df.batch == df.batch.min()) & df.policy.isin(STEPS)]
    d = d.groupby(["budget", "policy"], as_index=False)[["tpot_s", "hit_rate"]].mean()
    budgets = sorted(d.budget.unique())
    f, axes = plt.subplots(1, len(budgets), figsize=(4.5 * len(budgets), 3.2), squeeze=False)
    for ax, b in zip(axes[0], budgets):
        sub = d[d.budget == b].set_index("policy").reindex([s for s in STEPS if s in set(d.policy)])
        ax.bar(sub.index, sub.tpot_s, color="tab:blue")
        ax.set_ylabel("TPOT (s)")
        ax.set_title(f"budget {b}")
        ax.tick_params(axis="x", rotation=45)
        ax2 = ax.twinx()
        ax2.plot(sub.index, sub.hit_rate, "o-", color="tab:orange")
        ax2.set_ylabel("hit rate")
        ax2.set_ylim(0, 1)
    f.suptitle(f"ablation, batch {df.batch.min()} ({where})")
    f.tight_layout()
    g = f
else:
    raise SystemExit(f"unknown figure {fig}")
out.parent.mkdir(parents=True, exist_ok=True)
(g.figure if hasattr(g, "figure") else g).savefig(out, bbox_inches="tight")
