"""Snakemake script of rule `routing_figures`: paper Fig. 4 [v3 Fig. 5] (mean router score by rank, the top-k
boundary marked) and Fig. 6 [v3 Fig. 7] (reuse probability by rank) from the routing tables alone."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

sm = snakemake  # noqa: F821
sns.set_theme(style="whitegrid", context="paper")
score = pd.concat(pd.read_csv(p) for p in sm.input.score)
reuse = pd.concat(pd.read_csv(p) for p in sm.input.reuse)
f, ax = plt.subplots(figsize=(5, 3.2))
sns.lineplot(data=score, x="rank", y="mean_score", hue="model", marker=".", ax=ax)
for k in sorted(score.top_k.unique()):
    ax.axvline(k + 0.5, ls="--", color="grey")
    ax.text(k + 0.7, ax.get_ylim()[1] * 0.9, f"top-{k} | S(k+1)", fontsize=7, color="grey")
ax.set(xlabel="rank of the expert's router score (descending)", ylabel="mean router score",
       title="router score by rank, decode tokens x MoE layers")
f.tight_layout()
f.savefig(sm.output.score)
f, ax = plt.subplots(figsize=(5, 3.2))
sns.lineplot(data=reuse, x="rank", y="p_reuse_3", hue="model", marker=".", ax=ax)
ax.set(xlabel="rank of the expert's router score at step t (descending)", ylim=(0, 1),
       ylabel="P(routed to in steps t+1..t+3)", title="reuse probability by score rank")
f.tight_layout()
f.savefig(sm.output.reuse)
