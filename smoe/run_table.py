"""Run records as the campaign READMEs' tables: one markdown row per run, its decode figures per decode step.

Where it sits: `python -m smoe run-table FILE...` prints what `markdown` returns for the records of
`benchmarks/paper_shape.py` (`*.jsonl`, or `*.jsonl.gz` as committed under `results/gpu/`), so every table in a
result folder's README can be made again from its records. Pure: reads nothing but the records it is given.

Each column reads the record's own fields; a field that records of its day did not keep (`cpu_host_s` before
2026-12-07, `copy_wait_s` before the copy events, `tpot_over_bound` for runs without a floor) shows as `-`. One
column reads the records beside it: `x best baseline`, a run's TPOT over the fastest offloading baseline's run of
the same process and setting (source, model, budget, batch, workload, link), `-` where none ran (the floor, which has
no budget, included), as `smoe_vs_best_gpu.csv` takes it.
"""
from __future__ import annotations

from typing import Callable

from .policy import OFFLOADING_BASELINES, base_policy

MISSING = "-"


def _per_step(rec: dict, key: str, scale: float = 1e3) -> float | None:
    """A decode counter per decode step (ms for the `_s` ones), None where the record has no such counter."""
    decode, steps = rec["metrics"].get("decode", {}), rec["metrics"].get("decode_steps")
    if key not in decode or not steps:
        return None
    return decode[key] / steps * scale


def _worker_ms_per_expert(rec: dict) -> float | None:
    """The CPU worker's time per CPU expert in decode: its forward and its share of the layer's gather, weighting
    and add (ms), None for a run that ran no expert on the CPU."""
    decode = rec["metrics"].get("decode", {})
    n = decode.get("cpu_experts", 0)
    return decode["cpu_time_s"] / n * 1e3 if n and "cpu_time_s" in decode else None


def _planning_share(rec: dict) -> float | None:
    """Policy decisions (plan, the runtime's check, the prefetch decision, observe) as a share of TPOT, in %."""
    per_step = _per_step(rec, "policy_time_s", 1.0)
    return None if per_step is None or not rec["row"]["tpot_s"] else 100 * per_step / rec["row"]["tpot_s"]


def _fmt(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _policy(rec: dict) -> str:
    policy = rec["row"]["policy"]
    return "floor (`all-gpu`)" if policy == "all-gpu" else f"`{policy}`"


def _loads(rec: dict) -> str:
    loads, pre = _per_step(rec, "loads", 1.0), _per_step(rec, "prefetches", 1.0)
    return MISSING if loads is None else f"{loads:.2f} ({_fmt(pre, 2)})"


# (header, cell) per column, in the order the READMEs give them
COLUMNS: list[tuple[str, Callable[[dict], str]]] = [
    ("workload", lambda r: r["row"]["workload"]),
    ("batch", lambda r: str(r["row"]["batch"])),
    ("policy", _policy),
    ("TPOT ms", lambda r: _fmt(r["row"]["tpot_s"] * 1e3, 2)),
    ("p50 / p90", lambda r: f"{r['row']['tpot_p50_s'] * 1e3:.1f} / {r['row']['tpot_p90_s'] * 1e3:.1f}"),
    ("x bound", lambda r: _fmt(r["row"].get("tpot_over_bound"), 2)),
    ("hit", lambda r: f"{r['row']['hit_rate']:.3f}"),
    ("loads (prefetched)", _loads),
    ("CPU experts", lambda r: _fmt(_per_step(r, "cpu_experts", 1.0), 2)),
    ("worker ms / CPU expert", lambda r: _fmt(_worker_ms_per_expert(r), 2)),
    ("copy wait", lambda r: _fmt(_per_step(r, "copy_wait_s"), 1)),
    ("predictor", lambda r: _fmt(_per_step(r, "predict_time_s"), 1)),
    ("CPU host work", lambda r: _fmt(_per_step(r, "cpu_host_s"), 1)),
    ("planning %", lambda r: _fmt(_planning_share(r), 1)),
    ("TTFT s", lambda r: f"{r['row']['ttft_s']:.2f}"),
]
BEST = "x best baseline"  # the column that reads the records beside a run (`_best_baselines`), after TPOT


def _setting(rec: dict, source: str | None) -> tuple:
    row = rec["row"]
    return source, row["model"], row["budget_gb"], row["batch"], row["workload"], row.get("link_gbps")


def _best_baselines(records: list[dict], sources: list) -> dict[tuple, float]:
    """setting -> the fastest offloading baseline's TPOT among `records` (a spec with parameters counts as its
    baseline: `hybrimoe:pcie_gbps=55` is HybriMoE)."""
    best: dict[tuple, float] = {}
    for rec, src in zip(records, sources):
        if base_policy(rec["row"]["policy"]) in OFFLOADING_BASELINES:
            key = _setting(rec, src)
            best[key] = min(best.get(key, float("inf")), rec["row"]["tpot_s"])
    return best


NOTE = ("Per decode step: ms unless named; x best baseline = TPOT / the fastest offloading baseline's TPOT in the same "
        "process and setting; x bound = TPOT / max(floor, bytes over the link / the link's rate); loads "
        "with the prefetched ones in brackets; copy wait = the compute stream's wait for copies; predictor = the "
        "host's wait for the predictor's passes; CPU host work = the decoding thread's work around CPU experts; "
        "planning = policy decisions' share of TPOT.")


def markdown(records: list[dict], sources: list[str] | None = None) -> str:
    """The records as a markdown table, one row per run in the order given; `sources` (one per record) adds a first
    column naming where each came from, for tables over several processes."""
    if sources is not None and len(sources) != len(records):
        raise ValueError(f"{len(sources)} sources for {len(records)} records: give one per record")
    keys = sources if sources is not None else [None] * len(records)
    best = _best_baselines(records, keys)
    headers = [h for h, _ in COLUMNS]
    at = headers.index("TPOT ms") + 1
    headers.insert(at, BEST)
    rows = []
    for rec, key in zip(records, keys):
        row = [cell(rec) for _, cell in COLUMNS]
        base = best.get(_setting(rec, key))
        row.insert(at, _fmt(None if base is None else rec["row"]["tpot_s"] / base, 2))
        rows.append(row)
    if sources is not None:
        headers, rows = ["source", *headers], [[s, *row] for s, row in zip(sources, rows)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
