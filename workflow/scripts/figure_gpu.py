"""Snakemake script of rule `figure_gpu`: the paper's Fig. 11-14 analogues from the committed GPU measurements,
measured rows only (perf_gpu.csv, and ablation_gpu.csv for Fig. 14):
  fig11_tpot_gpu      TPOT per policy, per workload and setting (shape, budget, batch), at this GPU's own link and
                      at the paper's PCIe rate (emulated); the all-GPU floor drawn as a dashed line
  fig12_hit_rate_gpu  decode hit rate per policy, the same panels
  fig13_ttft_gpu      TTFT per policy, the same panels
  fig14_ablation_gpu  the ablation steps lru -> smoe (paper Fig. 14/17): TPOT bars and hit rate, one panel per
                      setting that ran every step
Each policy at the runtime's defaults: the op-by-op, attention-graphs-only, gathered, uncaptured-product, HF-block-order
and other-KV-cache variants of an A/B run (`@eager-...`, `@attention-skeleton`, `@gather-experts`, `@slots-experts`,
`@hf-block-order`, `@static-kv`, `@dynamic-kv`), and the rows of options measured and taken out again (`prefetch_at` other than
`layer`, `hits` other than `after-plan`), are left to the tables; the rows of those A/Bs labelled
`@in-layer-prefetch` or `@hits-after-plan` ran the runtime's order and are drawn under their policy's name.
A run measured in more than one folder of `gpu_results` is drawn from the folder listed first; a setting is per GPU,
so an H100's runs and an H200's have panels of their own. Each budget's panel has its shape's floor (`smoe.gpu_panels`).
A panel whose runs (its floor included) come from more than one folder, so were not all timed side by side, says
how many.
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from smoe.gpu_panels import drawn, panel_floors, panel_folders, setting  # noqa: E402

sm = snakemake  # noqa: F821
fig = f"{sm.wildcards.fig}_gpu"  # e.g. fig12_hit_rate_gpu
ORDER = ["on-demand", "lru", "lfu", "fifo", "cpu-assist", "hybrimoe", "moe-infinity", "smoe-ce", "smoe-ce-cr", "smoe-ce-cr-pre",
         "smoe", "smoe-early"]  # baselines, then SMoE's ablation steps and the early predictor; other variants after them
STEPS = ["lru", "smoe-ce", "smoe-ce-cr", "smoe-ce-cr-pre", "smoe"]
sns.set_theme(style="whitegrid", context="paper")


def link(g) -> str:
    return f"emulated {g:g} GB/s" if g == g else "native"


if fig == "fig14_ablation_gpu":
    d = pd.read_csv(sm.input.ablation)
    d["panel"] = (setting(d) + "\n" + d.workload + ", " + d.link_gbps.map(link) + ", skeleton graphs " + d.skeleton
                  + " (" + d.folder + ")")
    panels = list(dict.fromkeys(d.panel))
    cols = min(4, max(len(panels), 1))
    rows = -(-max(len(panels), 1) // cols)
    f, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        sub = d[d.panel == panel].set_index("step").reindex(STEPS)
        ax.bar(sub.index, sub.tpot_s, color="tab:blue")
        ax.set_ylabel("TPOT (s)")
        ax.set_title(panel, fontsize=8)
        ax.tick_params(axis="x", rotation=45)
        ax2 = ax.twinx()
        ax2.plot(sub.index, sub.hit_rate, "o-", color="tab:orange")
        ax2.set_ylabel("hit rate")
        ax2.set_ylim(0, 1)
    gpus = ", ".join(sorted(d.gpu.str.upper().unique()))
    f.suptitle(f"ablation steps on the paper's model shapes, measured on {gpus} (bars: TPOT, line: hit rate)")
    f.tight_layout()
    out = f
else:
    df = drawn(pd.read_csv(sm.input.perf))
    df["link"] = df.link_gbps.map(link)
    floor = panel_floors(df)  # [(setting, workload)] -> the floor's TPOT
    folders = panel_folders(df)  # [(setting, workload)] -> the folders its runs come from
    y, label, title = {"fig11_tpot_gpu": ("tpot_s", "TPOT (s)", "TPOT"),
                       "fig12_hit_rate_gpu": ("hit_rate", "decode hit rate", "decode hit rate"),
                       "fig13_ttft_gpu": ("ttft_s", "TTFT (s)", "TTFT")}[fig]
    d = df[df.policy != "all-gpu"]
    # each panel lists the policies it measured, in ORDER (facets take their categories in order of appearance)
    d = d.assign(rank=d.policy.map({p: i for i, p in enumerate(ORDER)}).fillna(len(ORDER))).sort_values(["rank", "policy"])
    d["policy"] = d.policy.str.replace(":prefetch_mode=", " ", regex=False)  # short tick labels for variants
    g = sns.catplot(data=d, x="policy", y=y, hue="link", col="workload", row="setting", kind="bar", height=3.6,
                    aspect=1.5, errorbar=None, sharey="row", sharex=False)
    g.set_titles("{row_name}\n{col_name}")
    ran = set(zip(d.setting, d.workload))
    for (s, workload), ax in g.axes_dict.items():
        if (s, workload) not in ran:  # the grid has a panel for every setting x workload; not every one was run
            ax.set_xticks([])
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center", color="0.5")
            continue
        if fig == "fig11_tpot_gpu" and (s, workload) in floor.index:
            ax.axhline(floor[(s, workload)], color="k", lw=1, ls="--")
        if folders.get((s, workload), 1) > 1:  # not all timed side by side: say so where the bars are
            ax.text(0.02, 0.97, f"runs from {folders[(s, workload)]} folders", transform=ax.transAxes, ha="left",
                    va="top", fontsize=7, color="0.35")
        ax.tick_params(axis="x", rotation=60, labelbottom=True)
    g.set_axis_labels("", label)
    gpus = ", ".join(sorted(df.gpu.str.upper().unique()))
    floor_note = " (dashed: all-GPU floor)" if fig == "fig11_tpot_gpu" else ""
    g.figure.suptitle(f"{title} on the paper's model shapes, measured on {gpus}{floor_note}", y=1.01)
    g.tight_layout()
    out = g.figure
Path(sm.output[0]).parent.mkdir(parents=True, exist_ok=True)
out.savefig(sm.output[0], bbox_inches="tight")
