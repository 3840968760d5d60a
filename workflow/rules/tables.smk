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
        [f for d in GPU_RESULTS for f in sorted(glob.glob(f"{d}/*.jsonl"))],
    output:
        perf=f"{TABLES}/perf_gpu.csv",
        validation=f"{TABLES}/costmodel_validation.csv",
        summary=f"{TABLES}/smoe_vs_best_gpu.csv",
        ablation=f"{TABLES}/ablation_gpu.csv",
    script:
        "../scripts/gpu_tables.py"
