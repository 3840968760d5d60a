# One job per (gpu, model, budget, policy): every workload and batch size, one JSON per run.


def _model_dir(w):
    spec = model_spec(config, w.model)
    return spec["path"] if "path" in spec else f"models/{w.model}/config.json"


rule bench:
    input:
        model=_model_dir,
        prompts=expand("prompts/{workload}.jsonl", workload=config["workloads"]),
    output:
        expand(
            "results/runs/{{gpu}}/{{model}}/{{budget}}/{{policy}}/{workload}/b{batch}.json",
            workload=config["workloads"],
            batch=config["batches"],
        ),
    resources:
        gpu=lambda w: 1 if config["device"] == "cuda" else 0,
    threads: 1
    log:
        "logs/bench/{gpu}/{model}/{budget}/{policy}.log",
    script:
        "../scripts/bench.py"
