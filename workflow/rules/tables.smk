# Tables only concatenate run JSONs (and committed GPU measurements).
import glob


rule perf_table:
    input:
        RUNS,
    output:
        f"{TABLES}/perf.csv",
    script:
        "../scripts/perf_table.py"


rule gpu_tables:
    input:
        # run records, committed gzipped (`*.jsonl.gz`) or as paper_shape.py writes them (`*.jsonl`)
        runs=[f for d in GPU_RESULTS for f in sorted(glob.glob(f"{d}/*.jsonl") + glob.glob(f"{d}/*.jsonl.gz"))],
        machines=list(dict.fromkeys(config.get("machine_profiles", []) + [MACHINE])),  # committed ones, and this one
    output:
        perf=f"{TABLES}/perf_gpu.csv",
        validation=f"{TABLES}/costmodel_validation.csv",
        summary=f"{TABLES}/smoe_vs_best_gpu.csv",
        ablation=f"{TABLES}/ablation_gpu.csv",
    script:
        "../scripts/gpu_tables.py"


rule accelerate_table:
    input:
        perf=f"{TABLES}/perf_gpu.csv",
        records=[f for d in ACCELERATE_RESULTS for f in sorted(glob.glob(f"{d}/*gib.json"))],
    output:
        f"{TABLES}/accelerate_gpu.csv",
    script:
        "../scripts/accelerate_table.py"


rule machine_profile:
    """The rates of the machine this config runs on (`gpu:`), for the cost model: pinned copies to the device,
    the device's memory, a CPU expert. On a GPU machine its output is committed and listed under
    `machine_profiles:` by the configs that model GPU runs."""
    output:
        f"{RES}/machine/{{gpu}}.json",
    resources:
        gpu=lambda w: 1 if config["device"] == "cuda" else 0,
    log:
        "logs/machine/{gpu}.log",
    shell:
        "{PY} measure-machine --device {config[device]} --name {wildcards.gpu} --out {output} 2> {log}"
