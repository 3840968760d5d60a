# One job per (gpu, model, budget, policy): every workload and batch size, one JSON per run.
# belady, the offline-optimal ceiling, needs the future of the very same run: a trace of the lru run.


def _model_dir(w):
    spec = model_spec(config, w.model)
    if "shape" in spec:  # random weights drawn in the job: nothing to build
        return []
    if "path" in spec:
        return spec["path"]
    return f"models/{w.model}/" + ("smolmoe.json" if "smolmoe" in spec else "config.json")


def _prompts(w):
    """The workloads' prompts; a shape model feeds random ids of its traces' lengths instead."""
    if "shape" in model_spec(config, w.model):
        return []
    return expand(f"{RES}/prompts/{{workload}}.jsonl", workload=config["workloads"])


def _replay(w):
    """A shape model's routing: the traces of the model it replays, one per (workload, batch)."""
    return replay_traces(config, w.model) if "shape" in model_spec(config, w.model) else []


RUN_OUTPUTS = expand(
    f"{RES}/runs/{{{{gpu}}}}/{{{{model}}}}/{{{{budget}}}}/{{{{policy}}}}/{{workload}}/b{{batch}}.json",
    workload=config["workloads"],
    batch=config["batches"],
)


ruleorder: bench_belady > bench


rule bench:
    input:
        model=_model_dir,
        replay=_replay,
        prompts=_prompts,
    output:
        RUN_OUTPUTS,
    resources:
        gpu=lambda w: 1 if config["device"] == "cuda" else 0,
    threads: 1
    log:
        "logs/bench/{gpu}/{model}/{budget}/{policy}.log",
    script:
        "../scripts/bench.py"


rule trace_for_belady:
    input:
        model=_model_dir,
        replay=_replay,
        prompts=_prompts,
    output:
        expand(
            f"{RES}/traces/{{{{gpu}}}}/{{{{model}}}}/{{{{budget}}}}/{{workload}}/b{{batch}}.pt",
            workload=config["workloads"],
            batch=config["batches"],
        ),
    params:
        trace=True,
    log:
        "logs/trace/{gpu}/{model}/{budget}.log",
    script:
        "../scripts/bench.py"


rule bench_belady:
    input:
        model=_model_dir,
        replay=_replay,
        prompts=_prompts,
        traces=rules.trace_for_belady.output,
    output:
        RUN_OUTPUTS,
    wildcard_constraints:
        policy="belady",
    log:
        "logs/bench/{gpu}/{model}/{budget}/{policy}.log",
    script:
        "../scripts/bench.py"
