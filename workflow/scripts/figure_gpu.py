"""Snakemake script of rule `figure_gpu`: Fig. 11 analogue from perf_gpu.csv (measured rows only): TPOT per
policy on the paper's model shapes, at this GPU's own link and at the paper's PCIe rate (emulated), per
workload and batch size, each at the runtime's defaults (the op-by-op variants of an A/B run, `@eager-...`, are
left to the tables). The all-GPU floor is drawn as a line. A setting measured in more than one folder of
`gpu_results` is drawn from the folder listed first."""
import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

sm = snakemake  # noqa: F821
ORDER = ["on-demand", "lru", "lfu", "fifo", "cpu-assist", "hybrimoe", "moe-infinity", "smoe-ce", "smoe-ce-cr", "smoe-ce-cr-pre",
         "smoe"]  # baselines, then SMoE's ablation steps; other variants after them
df = pd.read_csv(sm.input[0])
df = df[df.measured.astype(bool) & ~df.policy.str.contains("@eager-")].copy()  # A/B variants: in the tables only
df["folder"] = df.source.str.split("/").str[0]
first = {f: i for i, f in enumerate(df.folder.drop_duplicates())}  # the table keeps the config's folder order
run = ["model", "budget_gb", "batch", "workload", "policy", "link_gbps"]
df = df.assign(rank=df.folder.map(first)).sort_values("rank", kind="stable").drop_duplicates(run, keep="first")
df["link"] = df.link_gbps.map(lambda g: f"emulated {g:g} GB/s" if g == g else "native")
df["setting"] = df.model + " @" + df.budget_gb.map(lambda b: "" if b != b else f"{b:g} GB") + ", b" + df.batch.astype(str)
floor = df[df.policy == "all-gpu"].set_index(["setting", "workload"]).tpot_s
d = df[df.policy != "all-gpu"]
sns.set_theme(style="whitegrid", context="paper")
# each panel lists the policies it measured, in ORDER (facets take their categories in order of appearance)
d = d.assign(rank=d.policy.map({p: i for i, p in enumerate(ORDER)}).fillna(len(ORDER))).sort_values(["rank", "policy"])
d["policy"] = d.policy.str.replace(":prefetch_mode=", " ", regex=False)  # short tick labels for variants
g = sns.catplot(data=d, x="policy", y="tpot_s", hue="link", col="workload", row="setting", kind="bar", height=3.6,
                aspect=1.5, errorbar=None, sharey="row", sharex=False)
g.set_titles("{row_name}\n{col_name}")
for (setting, workload), ax in g.axes_dict.items():
    if (setting, workload) in floor.index:
        ax.axhline(floor[(setting, workload)], color="k", lw=1, ls="--")
    ax.tick_params(axis="x", rotation=60, labelbottom=True)
g.set_axis_labels("", "TPOT (s)")
gpus = ", ".join(sorted(df.gpu.unique()))
g.figure.suptitle(f"TPOT on the paper's model shapes, measured on {gpus} (dashed: all-GPU floor)", y=1.01)
g.tight_layout()
g.savefig(sm.output[0])
