"""`python -m smoe run-table`: committed run records as the campaign READMEs' per-decode-step tables."""
from pathlib import Path

import pandas as pd
import pytest

from smoe.cli import main
from smoe.files import read_jsonl
from smoe.run_table import BEST, COLUMNS, markdown

ROOT = Path(__file__).resolve().parents[1]
AB_NEW1 = ROOT / "results/gpu/combine_ab_h100_s60/new1/deepseek-moe-16b-shape-10l_link12.jsonl.gz"
FIRST_H200 = ROOT / "results/gpu/paper_shape_h200/deepseek-moe-16b-shape_link12.jsonl.gz"
DS12_B3_L = ROOT / "results/gpu/paper_shape_h100_s61_deepseek12_b3_l/deepseek-moe-16b-shape_link12.jsonl.gz"
HEADERS = [h for h, _ in COLUMNS]
HEADERS.insert(HEADERS.index("TPOT ms") + 1, BEST)


def cells(table: str) -> list[dict[str, str]]:
    """A markdown table back into one {header: cell} per row."""
    head, _, *rows = table.splitlines()
    keys = [c.strip() for c in head.strip("|").split("|")]
    return [dict(zip(keys, (c.strip() for c in row.strip("|").split("|")))) for row in rows]


def test_the_ab_readme_numbers_come_out_of_the_records():
    """The fifty-second campaign's A/B README gives, for new1's HybriMoE, 61.70 ms, 1.06 ms a CPU expert on the
    worker and 2.5 ms of host work a step, with 29.71 loads (7.97 prefetched) and 37.42 CPU experts a step."""
    rows = {r["policy"]: r for r in cells(markdown(read_jsonl(AB_NEW1)))}
    assert set(rows) == {"floor (`all-gpu`)", "`hybrimoe`", "`cpu-assist`"}
    hyb = rows["`hybrimoe`"]
    assert (hyb["TPOT ms"], hyb["worker ms / CPU expert"], hyb["CPU host work"]) == ("61.70", "1.06", "2.5")
    assert (hyb["loads (prefetched)"], hyb["CPU experts"], hyb["hit"]) == ("29.71 (7.97)", "37.42", "0.596")
    assert rows["`cpu-assist`"]["TPOT ms"] == "97.79" and rows["`cpu-assist`"]["loads (prefetched)"] == "0.00 (0.00)"
    floor = rows["floor (`all-gpu`)"]
    assert floor["x bound"] == "1.00" and floor["worker ms / CPU expert"] == "-"  # it runs no CPU expert


def test_fields_older_records_did_not_keep_show_as_missing():
    """The first H200 campaign's records predate the copy events and `cpu_host_s`: those columns say `-`, the rest
    are filled."""
    rows = cells(markdown(read_jsonl(FIRST_H200)))
    assert rows and all(r["copy wait"] == "-" and r["CPU host work"] == "-" for r in rows)
    assert all(r["TPOT ms"] != "-" and r["planning %"] != "-" for r in rows)


def test_sources_name_each_record_or_are_refused():
    recs = read_jsonl(AB_NEW1)
    rows = cells(markdown(recs, ["new1"] * len(recs)))
    assert [r["source"] for r in rows] == ["new1"] * len(recs)
    with pytest.raises(ValueError, match="1 sources for 3 records"):
        markdown(recs, ["new1"])


def test_cli_prints_the_table_and_names_a_file_that_is_no_record(capsys):
    assert main(["run-table", str(AB_NEW1), str(FIRST_H200)]) == 0
    out = capsys.readouterr().out
    rows = cells(out.split("\n\n")[0])
    assert {r["source"] for r in rows} == {"new1", "paper_shape_h200"} and list(rows[0])[1:] == HEADERS
    assert main(["run-table", str(ROOT / "README.md")]) == 2
    assert "README.md: not a run-record file" in capsys.readouterr().err


def test_best_baseline_column_is_the_fastest_offloading_baseline_of_the_process():
    """The fifty-third campaign's deepseek 12 GB language cell at batch 3: HybriMoE the fastest baseline (1.00), LRU
    2.52x and CPU-assist 1.94x its step, SMoE 0.39x; the floor has no budget and no baseline beside it."""
    rows = {r["policy"]: r[BEST] for r in cells(markdown(read_jsonl(DS12_B3_L)))}
    assert rows == {"floor (`all-gpu`)": "-", "`lru`": "2.52", "`cpu-assist`": "1.94", "`smoe`": "0.39",
                    "`hybrimoe`": "1.00"}
    # records with no offloading baseline beside SMoE: the column has nothing to divide by
    smoe_only = [r for r in read_jsonl(DS12_B3_L) if r["row"]["policy"] in ("all-gpu", "smoe")]
    assert {r[BEST] for r in cells(markdown(smoe_only))} == {"-"}


def test_best_baseline_column_agrees_with_the_dag_table():
    """For every committed H100 folder and one H200 folder, SMoE's `x best baseline` values are `smoe_vs_best_gpu.csv`'s `smoe / best`
    for that folder, to the table's two digits (compared as lists: a folder can hold two budgets or links of one
    workload, which the table's rows do not name)."""
    best = pd.read_csv(ROOT / "results/tables/smoe_vs_best_gpu.csv")
    # and the H200 folder whose best baseline is a spec with a parameter set (`hybrimoe:pcie_gbps=55`, the own link)
    own = "paper_shape_h200_s35_qwen48_own"
    best = best[(best.folder.str.startswith("paper_shape_h100_") | best.folder.eq(own)) & best["smoe / best"].notna()]
    assert len(best) >= 30 and "hybrimoe:pcie_gbps=55" in set(best[best.folder == own].best_baseline)
    for folder, rows in best.groupby("folder"):
        recs = [r for path in (ROOT / "results/gpu" / folder).glob("*.jsonl.gz") for r in read_jsonl(path)]
        smoe = [c for c in cells(markdown(recs)) if c["policy"] == "`smoe`"]
        got = sorted((c["workload"], int(c["batch"]), c[BEST]) for c in smoe)
        want = sorted((r.workload, r.batch, f"{r['smoe / best']:.2f}") for _, r in rows.iterrows())
        assert got == want, folder
