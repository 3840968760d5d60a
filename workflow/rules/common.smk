# Config validation before any job runs: shape and types by the JSON schema, names by smoe.dag.
import os

from snakemake.utils import validate

from smoe.dag import check_config, model_spec, run_paths

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
validate(config, "../../config/schema.yaml")
check_config(config)

PY = "python -m smoe"
RUNS = run_paths(config)
FIGURES = [
    "figures/fig11_tpot.pdf",
    "figures/fig12_hit_rate.pdf",
    "figures/fig13_ttft.pdf",
    "figures/fig14_ablation.pdf",
]
