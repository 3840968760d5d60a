# Routing statistics of each model (paper Fig. 4/6 [v3 Fig. 5/7]) from the decode traces that
# trace_for_belady records (lru at the first budget, batch 1, every workload).


def _routing_traces(w):
    budget = model_spec(config, w.model).get("budgets", config["budgets"])[0]
    return [TRACE.format(results=RES, gpu=config["gpu"], model=w.model, budget=budget, workload=wl, batch=1)
            for wl in config["workloads"]]


rule routing_stats:
    input:
        _routing_traces,
    output:
        score=f"{TABLES}/routing/{{model}}/fig5_score_by_rank.csv",
        reuse=f"{TABLES}/routing/{{model}}/fig7_reuse_by_rank.csv",
    script:
        "../scripts/routing_stats.py"


rule routing_figures:
    input:
        score=expand(f"{TABLES}/routing/{{model}}/fig5_score_by_rank.csv", model=CKPT_MODELS),
        reuse=expand(f"{TABLES}/routing/{{model}}/fig7_reuse_by_rank.csv", model=CKPT_MODELS),
    output:
        score=f"{FIGDIR}/fig5_score_by_rank.pdf",
        reuse=f"{FIGDIR}/fig7_reuse_by_rank.pdf",
    script:
        "../scripts/routing_figures.py"
