"""Snakemake script of rules `bench`, `bench_belady` and `trace_for_belady`: every (workload, batch) run of
one (gpu, model, budget, policy). `trace_for_belady` runs lru and keeps only the traces; `bench_belady`
hands each run its own trace (belady knows the future of exactly that run). A shape model (random weights)
replays the traces of the model it names, with one host store filled for all of its runs."""
import logging
from pathlib import Path

from smoe.accuracy import alpha_policies
from smoe.cli import run_one
from smoe.dag import budget_args, model_spec
from smoe.replay import filled_host_store, run_replayed
from smoe.shapes import RandomSource
from smoe.files import write_json
from smoe.workloads import read_prompts

sm = snakemake  # noqa: F821  (set by Snakemake)
cfg, w = sm.config, sm.wildcards
tracing = sm.params.get("trace", False) if hasattr(sm.params, "get") else False
policy = "lru" if tracing else w.policy
logging.basicConfig(filename=sm.log[0], level=logging.INFO, format="%(name)s: %(message)s")
shape = model_spec(cfg, w.model).get("shape")
if shape:
    source = RandomSource.named(shape["name"], device=cfg["device"], seed=cfg["seed"], **shape.get("overrides", {}))
    store = filled_host_store(source, cfg["device"])
else:
    model = str(Path(sm.input.model).parent) if sm.input.model.endswith(".json") else sm.input.model
uses_alpha = policy in alpha_policies()
for i, out in enumerate(sm.output):
    workload, batch = Path(out).parent.name, int(Path(out).stem[1:])
    params = {"alpha": str(cfg["alpha"])} if uses_alpha else {}
    if policy == "belady":
        params["trace"] = sm.input.traces[i]  # same (workload, batch) order as the outputs
    if shape:
        rec = run_replayed(source, policy, sm.input.replay[i], batch, device=cfg["device"], params=params,
                           host_store=store, seed=cfg["seed"], record_trace=out if tracing else None,
                           **budget_args(w.budget))
    else:
        prompt_file = next(f for f in sm.input.prompts if Path(f).stem == workload)
        prompts = read_prompts(prompt_file)[: cfg["prompts_per_workload"] * batch]
        rec = run_one(model=model, policy=policy, device=cfg["device"], batch=batch, prompts=prompts,
                      max_new_tokens=cfg["max_new_tokens"], params=params, seed=cfg["seed"],
                      trace=out if tracing else None, trace_predictions=tracing, **budget_args(w.budget))
    if tracing:
        continue
    rec["params"].update(gpu=w.gpu, model_name=w.model, budget=w.budget, workload=workload)
    write_json(out, rec)
    logging.info("%s %s b%d: tpot %.4fs hit rate %s", policy, workload, batch, rec["metrics"]["tpot_s"],
                 rec["metrics"]["hit_rate"])
