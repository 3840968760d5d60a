# Config validation before any job runs: shape and types by the JSON schema, names by smoe.dag.
import os

from snakemake.utils import validate

from smoe.dag import (
    TRACE, accuracy_paths, check_config, model_spec, numbers_from_cli, replay_traces, results_dir, run_paths,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
numbers_from_cli(config)
validate(config, "../../config/schema.yaml")
check_config(config)

PY = "python -m smoe"
RUNS = run_paths(config)
RES = results_dir(config)  # runs and traces
MACHINE = f"{RES}/machine/{config['gpu']}.json"  # the rates of the machine this config runs on (rule machine_profile)
CKPT_MODELS = [m["name"] for m in config["models"] if "shape" not in m]  # the models with real routing
ACC_RECORDS = accuracy_paths(config)
TABLES = config.get("tables_dir", "results/tables")  # a second config keeps its tables and figures apart
FIGDIR = config.get("figures_dir", "figures")
ACC_TABLES = [f"{TABLES}/accuracy.csv"] if ACC_RECORDS else []
FIGURES = [f"{FIGDIR}/{f}.pdf" for f in ("fig11_tpot", "fig12_hit_rate", "fig13_ttft", "fig14_ablation")]
GPU_RESULTS = config.get("gpu_results", [])  # committed GPU measurements (benchmarks/paper_shape.py outputs)
ACCELERATE_RESULTS = config.get("accelerate_results", [])  # ... and of benchmarks/accelerate_offload.py
GPU_TABLES = [f"{TABLES}/{t}.csv" for t in ("perf_gpu", "costmodel_validation", "smoe_vs_best_gpu", "ablation_gpu")] \
    + [f"{FIGDIR}/{f}_gpu.pdf" for f in ("fig11_tpot", "fig12_hit_rate", "fig13_ttft", "fig14_ablation")] \
    if GPU_RESULTS else []
GPU_TABLES += [f"{TABLES}/accelerate_gpu.csv"] if GPU_RESULTS and ACCELERATE_RESULTS else []


wildcard_constraints:
    model="[A-Za-z0-9._-]+",
    gpu="[A-Za-z0-9._-]+",
    budget="[A-Za-z0-9._-]+",
    policy="[A-Za-z0-9._-]+",
    workload="[a-z]+",
