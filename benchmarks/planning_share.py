"""Planning time of committed `paper_shape.py` runs: the host time of the policies' decisions per decode layer and as a
share of TPOT (the issue's target: under 5%), one row per run, with the counters that show whether runs decided the
same.

    python benchmarks/planning_share.py results/gpu/planning_ab_h200_s36/* \
        --out results/gpu/planning_ab_h200_s36/summary.csv

Each argument is a run folder (its `*.jsonl` or `*.jsonl.gz`); the `folder` column is its name. `policy_us_per_layer`
is the decode phase's `policy_time_s` (plan, the runtime's check of it, the prefetch decision, observe) over decode
steps times MoE layers; `share` is it over decode steps times TPOT; `check_us_per_layer` and `prefetch_us_per_layer`
are its parts spent in the runtime's check of the plans and in the prefetch decisions (`check_time_s`,
`prefetch_time_s`; the latter blank in records made before the runtime counted it). `decisions` joins the decode
counters (hits, loads, CPU experts, substitutions, prefetches): equal strings, equal decisions.
"""
from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import pandas as pd

COUNTERS = ("hits", "loads", "cpu_experts", "substitutions", "prefetches")


def moe_layers(rec: dict) -> int | None:
    """MoE layers a run record decoded through, from its own plan summary (`plans`: one [step, layer, ...] per decode
    forward of each layer), so a run of the first N layers (`paper_shape.py --layers N`) counts N; None without it."""
    plans = rec.get("plans")
    return len({p[1] for p in plans}) if plans else None


def us_per_layer(seconds: float | None, steps: int, layers: int | None) -> float | None:
    """A run's seconds of some decision work -> microseconds per decode layer (None without the layer count or the
    seconds)."""
    return 1e6 * seconds / (steps * layers) if layers and seconds is not None else None


def runs(folder: Path) -> list[dict]:
    files = sorted(folder.glob("*.jsonl")) + sorted(folder.glob("*.jsonl.gz"))
    if not files:
        raise SystemExit(f"{folder}: no *.jsonl or *.jsonl.gz run records")
    rows = []
    for f in files:
        with (gzip.open(f, "rt") if f.suffix == ".gz" else open(f)) as lines:
            for line in lines:
                rec = json.loads(line)
                row, m = rec["row"], rec["metrics"]
                dec, steps = m["decode"], m["decode_steps"]
                layers = moe_layers(rec)
                rows.append({
                    "folder": folder.name, "model": row["model"], "policy": row["policy"], "batch": row["batch"],
                    "workload": row["workload"], "repeat": row.get("repeat", 0), "tpot_ms": 1e3 * m["tpot_s"],
                    "policy_us_per_layer": us_per_layer(dec["policy_time_s"], steps, layers),
                    "share": dec["policy_time_s"] / (steps * m["tpot_s"]),
                    "check_us_per_layer": us_per_layer(dec["check_time_s"], steps, layers),
                    # blank in records made before the runtime counted the prefetch apart
                    "prefetch_us_per_layer": us_per_layer(dec.get("prefetch_time_s"), steps, layers),
                    "decisions": " ".join(str(dec[c]) for c in COUNTERS),
                })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="paper_shape.py output folders")
    ap.add_argument("--out", required=True, help="CSV to write")
    args = ap.parse_args()
    table = pd.DataFrame([r for folder in args.folders if folder.is_dir() for r in runs(folder)])
    if table.empty:
        raise SystemExit(f"no run folder among {', '.join(map(str, args.folders))}")
    table.to_csv(args.out, index=False)
    keys = ["folder", "policy", "batch"]
    print(table.groupby(keys, sort=False)[["tpot_ms", "policy_us_per_layer", "share"]].mean().round(3).to_string())


if __name__ == "__main__":
    main()
