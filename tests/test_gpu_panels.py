"""What the GPU figures draw (`smoe.gpu_panels`): one row per run from the folder listed first, and each panel's
floor, which has no budget, found for every budget of its shape, batch, GPU and workload."""
import math

import pandas as pd

from smoe.gpu_panels import drawn, panel_floors, panel_folders


def row(folder, policy, tpot, gpu="h200", budget=12.0, batch=1, workload="exam", link=12.0, **modes):
    return {"gpu": gpu, "model": "deepseek-moe-16b-shape", "budget_gb": budget if policy != "all-gpu" else math.nan,
            "batch": batch, "workload": workload, "policy": policy,
            "link_gbps": link if policy != "all-gpu" else math.nan, "tpot_s": tpot, "measured": True,
            "prefetch_at": modes.get("prefetch_at", "layer"), "hits": modes.get("hits", "after-plan"),
            "source": f"{folder}/deepseek-moe-16b-shape_link12.jsonl.gz"}


def table(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def test_every_budget_panel_gets_its_shapes_floor_from_the_first_folder():
    perf = table(row("new", "all-gpu", 0.020), row("new", "smoe", 0.040), row("new", "smoe", 0.030, budget=16.0),
                 row("old", "all-gpu", 0.017), row("old", "smoe", 0.050), row("old", "lru", 0.300))
    rows = drawn(perf)
    # one bar per run, from the folder listed first; a run only the other folder has comes from it
    bars = rows.set_index(["setting", "policy"]).tpot_s
    assert bars[("deepseek-moe-16b-shape @12 GB, b1, H200", "smoe")] == 0.040
    assert bars[("deepseek-moe-16b-shape @12 GB, b1, H200", "lru")] == 0.300
    floors = panel_floors(rows)
    assert floors.to_dict() == {("deepseek-moe-16b-shape @12 GB, b1, H200", "exam"): 0.020,
                                ("deepseek-moe-16b-shape @16 GB, b1, H200", "exam"): 0.020}


def test_a_floor_is_never_drawn_for_another_gpu_batch_or_workload():
    perf = table(row("a", "all-gpu", 0.020, gpu="h200"), row("b", "smoe", 0.040, gpu="h100"),
                 row("a", "smoe", 0.045, batch=3), row("a", "smoe", 0.041, workload="knowledge"))
    assert panel_floors(drawn(perf)).empty


def test_variants_and_options_taken_out_are_left_to_the_tables():
    perf = table(row("a", "all-gpu", 0.020), row("a", "smoe", 0.040), row("a", "smoe@eager-skeleton", 0.060),
                 row("a", "smoe", 0.050, prefetch_at="next-layer"), row("b", "smoe@hits-after-plan", 0.045))
    rows = drawn(perf)
    assert sorted(rows.policy) == ["all-gpu", "smoe"]  # the runtime-order A/B row is folder b's smoe: a is first
    assert rows.set_index("policy").tpot_s["smoe"] == 0.040


def test_a_panel_counts_the_folders_its_bars_and_floor_come_from():
    """The fifty-second campaign's case: SMoE, HybriMoE and the floor from the folder listed first, LRU from a later
    one (another process, another host), so the panel was not all timed side by side. The floor counts too: bars
    from one folder beside the first folder's floor are 2; a panel whose runs all come from one folder is 1."""
    perf = table(row("s59", "all-gpu", 0.013), row("s59", "smoe", 0.033), row("s59", "hybrimoe", 0.071),
                 row("s59", "all-gpu", 0.012, workload="reasoning"),
                 row("s60", "all-gpu", 0.028), row("s60", "smoe", 0.053), row("s60", "lru", 0.126),
                 row("s60", "all-gpu", 0.022, workload="reasoning"), row("s60", "lru", 0.112, workload="reasoning"),
                 row("s60", "all-gpu", 0.025, workload="knowledge"), row("s60", "lru", 0.120, workload="knowledge"),
                 row("s59", "smoe", 0.045, batch=3))  # a panel with no floor: its bars' folders alone
    counts = panel_folders(drawn(perf)).to_dict()
    assert counts == {("deepseek-moe-16b-shape @12 GB, b1, H200", "exam"): 2,
                      ("deepseek-moe-16b-shape @12 GB, b1, H200", "reasoning"): 2,
                      ("deepseek-moe-16b-shape @12 GB, b1, H200", "knowledge"): 1,
                      ("deepseek-moe-16b-shape @12 GB, b3, H200", "exam"): 1}
