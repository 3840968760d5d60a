"""accelerate offloading against the runtime's runs at the same budget (`smoe.accelerate_compare`)."""
import pandas as pd
import pytest

from smoe.accelerate_compare import compare

DEFAULTS = dict(measured=True, skeleton="layer", grouped="slots", kv_cache="static", hits="after-plan",
                prefetch_at="layer", emulated=True, batch=1, model="s", workload="exam", gpu="h200")


def run(policy, tpot, folder="f1", budget=12.0, **kw):
    row = DEFAULTS | dict(policy=policy, tpot_s=tpot, budget_gb=budget, source=f"{folder}/s.jsonl.gz") | kw
    if policy == "all-gpu":
        row |= dict(budget_gb=float("nan"), emulated=False)  # the floor has no budget and no link of its own
    return row


def record(budget=12.0, tpot=3.0):
    return {"shape": "s", "budget_gb": budget, "modules_on_gpu": 5, "device_name": "NVIDIA H200",
            "runs": [{"batch": 1, "ttft_s": 4.0, "tpot_s": tpot, "step_s": [tpot] * 7}]}


def test_each_policy_against_accelerate_at_the_same_budget():
    perf = pd.DataFrame([
        run("all-gpu", 0.02), run("smoe", 0.04), run("smoe", 0.06, workload="reasoning"), run("lru", 0.10),
        run("all-gpu", 0.5, folder="f9"),  # a floor of a folder with no matched run: not counted
        run("smoe", 0.01, budget=16.0),  # another budget, beyond the tolerance
        run("smoe", 0.01, batch=3),  # another batch
        run("smoe", 0.01, kv_cache="dynamic"),  # an earlier default
        run("smoe", 0.01, skeleton="eager"),  # an A/B's other side
        run("smoe@hits-after-plan", 0.05),  # an A/B's label: the runtime's order, counted under its policy
        run("smoe", 0.01, hits="before-plan"),  # an option measured and taken out again
        run("smoe", 0.01, emulated=False),  # the H200's own link
        run("skip", 0.01),  # not an offloading policy
        run("smoe", 0.01, gpu="h100"), run("all-gpu", 0.01, gpu="h100"),  # timed on another GPU than accelerate
    ])
    table = compare([record()], perf).set_index("policy")
    assert list(table.index) == ["all-gpu", "smoe", "lru"]
    smoe = table.loc["smoe"]
    assert smoe.runs == 3 and smoe.workloads == "exam reasoning"
    assert (smoe.tpot_median_s, smoe.tpot_min_s, smoe.tpot_max_s) == (0.05, 0.04, 0.06)
    assert smoe.speedup_median == pytest.approx(3.0 / 0.05) and smoe.speedup_min == pytest.approx(3.0 / 0.06)
    assert table.loc["all-gpu"].runs == 1 and table.loc["all-gpu"].tpot_median_s == 0.02
    assert table.budget_gb.eq(12.0).all() and table.accelerate_budget_gib.eq(12.0).all()


def test_a_budget_within_ten_percent_matches_and_one_beyond_does_not():
    perf = pd.DataFrame([run("smoe", 0.07, budget=48.0), run("smoe", 0.08, budget=40.0, folder="f2"),
                         run("smoe", 0.06, budget=56.0, folder="f3")])
    table = compare([record(budget=44.0, tpot=12.0)], perf)
    assert sorted(table.budget_gb) == [40.0, 48.0]  # 44 GiB +- 4.4
    assert compare([record(budget=30.0)], perf).empty
