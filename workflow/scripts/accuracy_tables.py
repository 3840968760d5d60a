"""Snakemake script of rule `accuracy_tables`: eval records -> accuracy.csv (long), Table IV (accuracy vs
alpha: dense, the MoE as built, smoe at each alpha), Table V/VI (substitution policies at the config's alpha)
and the share of the dense model's margin over chance each setting keeps."""
from pathlib import Path

from smoe.accuracy import margin_kept, pivot, table
from smoe.files import write_json

sm = snakemake  # noqa: F821  (set by Snakemake)
acc = sm.config["accuracy"]
df = table(sm.input, [Path(p).parents[2].name for p in sm.input])  # {dir}/{model}/{budget}/{policy}/a{alpha}.json
df.to_csv(sm.output.long, index=False)
alphas = [f"smoe@{a:g}" for a in sorted(set(acc.get("alphas", [])) | {sm.config["alpha"]})]
pivot(df, ["dense", "moe", *alphas]).to_csv(sm.output.table4)
alpha = sm.config["alpha"]
pivot(df, ["dense", "moe", *(f"{p}@{alpha:g}" for p in ["smoe", *acc.get("policies", [])])]).to_csv(sm.output.table56)
settings = sorted(set(pivot(df).columns) - {"dense"})
write_json(sm.output.margin, {s: margin_kept(df, s) for s in settings})
