"""Snakemake script of rule `accelerate_table`: accelerate_offload.py's records (config `accelerate_results`) and
perf_gpu.csv -> accelerate_gpu.csv, every policy's TPOT against accelerate's at the same budget
(`smoe.accelerate_compare`)."""
import json
from pathlib import Path

import pandas as pd

from smoe.accelerate_compare import compare

sm = snakemake  # noqa: F821
records = [json.loads(Path(p).read_text()) for p in sm.input.records]
compare(records, pd.read_csv(sm.input.perf)).to_csv(sm.output[0], index=False)
