"""Snakemake script of rule `routing_stats`: the paper's routing motivation figures as tables, from the
recorded decode traces of one model (lru runs at batch 1, every workload; lru does not change routing).

  fig5_score_by_rank.csv   mean router score at each rank position (paper Fig. 4 [v3 Fig. 5]), and the model's top-k
  fig7_reuse_by_rank.csv   P(the expert at each rank is routed to within the next 3 decode steps) (Fig. 6 [v3 Fig. 7]),
                           counted within each generate call (its steps are consecutive only there), averaged over runs
"""
import pandas as pd
import torch

from smoe.trace_stats import reuse_by_rank, score_by_rank

sm = snakemake  # noqa: F821  (set by Snakemake)
runs = [torch.load(path, weights_only=False)["records"] for path in sm.input]
score = score_by_rank([r for records in runs for r in records])
reuse = torch.stack([reuse_by_rank(records, horizon=3) for records in runs]).mean(dim=0)  # each run needs 4+ decode steps
base = {"model": sm.wildcards.model, "rank": range(1, len(score) + 1)}
top_k = runs[0][0]["topk"].shape[1]
pd.DataFrame({**base, "mean_score": score.tolist(), "top_k": top_k}).to_csv(sm.output.score, index=False)
pd.DataFrame({**base, "p_reuse_3": reuse.tolist()}).to_csv(sm.output.reuse, index=False)
