"""Snakemake script of rule `gpu_tables`: committed GPU measurements (benchmarks/paper_shape.py outputs) ->
  perf_gpu.csv                one row per measured run (measured=True; `emulated` where the link was slowed to
                              a paper GPU's PCIe), then the cost model's rows for every GPU profile
                              (measured=False), modelled from the native runs' executed plans
  costmodel_validation.csv    per offloading run, the cost model's TPOT against the measured one on the machine
                              it ran on, at the run's own link rate; host costs are fitted on the native-link
                              runs, so the emulated-link runs (`held_out`) check it
"""
import json
from pathlib import Path

import pandas as pd

from smoe.costmodel import model_measured_runs

sm = snakemake  # noqa: F821
measured, modelled, validation = [], [], []
for path in map(Path, sm.input):  # {stem}.jsonl with {stem}_env.json beside it
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        continue
    env = json.loads(path.with_name(f"{path.stem}_env.json").read_text())
    rows = pd.DataFrame([r["row"] for r in records])
    measured.append(rows.assign(emulated=rows.link_gbps.notna(), source=f"{path.parent.name}/{path.name}"))
    check, model = model_measured_runs(records, env["copy_Bps"] / 1e9, records[0]["row"]["gpu"])
    validation += check
    modelled += model
table = pd.concat([*measured, pd.DataFrame(modelled).assign(emulated=False)], ignore_index=True)
table.to_csv(sm.output.perf, index=False)
pd.DataFrame(validation).to_csv(sm.output.validation, index=False)
