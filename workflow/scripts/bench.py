"""Snakemake script of rule `bench`: every (workload, batch) run of one (gpu, model, budget, policy)."""
import logging
from pathlib import Path

from smoe.cli import run_one
from smoe.dag import budget_args
from smoe.files import write_json
from smoe.workloads import read_prompts

sm = snakemake  # noqa: F821  (set by Snakemake)
cfg, w = sm.config, sm.wildcards
logging.basicConfig(filename=sm.log[0], level=logging.INFO, format="%(name)s: %(message)s")
model = str(Path(sm.input.model).parent) if sm.input.model.endswith("config.json") else sm.input.model
params = {"alpha": str(cfg["alpha"])} if w.policy.startswith("smoe") or w.policy in ("skip", "score-lower") else {}
for out in sm.output:
    workload, batch = Path(out).parent.name, int(Path(out).stem[1:])
    prompts = read_prompts(f"prompts/{workload}.jsonl")[: cfg["prompts_per_workload"] * batch]
    rec = run_one(model=model, policy=w.policy, device=cfg["device"], batch=batch, prompts=prompts,
                  max_new_tokens=cfg["max_new_tokens"], params=params, seed=cfg["seed"], **budget_args(w.budget))
    rec["params"].update(gpu=w.gpu, model_name=w.model, budget=w.budget, workload=workload)
    write_json(out, rec)
    logging.info("%s %s b%d: tpot %.4fs hit rate %s", w.policy, workload, batch, rec["metrics"]["tpot_s"],
                 rec["metrics"]["hit_rate"])
