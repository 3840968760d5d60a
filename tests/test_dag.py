"""The reproduction DAG: config validation with clear messages, a dry run of the default plans every run,
and the CI grid (config/test.yaml) end to end into every table and figure."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from smoe.dag import ConfigError, accuracy_runs, budget_args, check_config, run_paths

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def load(name):
    return yaml.safe_load((ROOT / "config" / name).read_text())


def config_of(name):
    """The config a run with `--configfile config/<name>` sees: the Snakefile's config/config.yaml, with `name` laid
    over it key by key (dicts merged, the rest replaced), as Snakemake does."""
    config = load("config.yaml")
    update_config(config, load(name))
    return config


def snake(*args, cwd=ROOT, timeout=900):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(SNAKEMAKE + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_budget_wildcards():
    assert budget_args("s24") == {"cache_experts": 24}
    assert budget_args("12.5gb") == {"budget_gb": 12.5}
    with pytest.raises(ConfigError, match="s<slots>"):
        budget_args("24")


@pytest.mark.parametrize("key,value,message", [
    ("policies", ["lru", "magic"], "unknown policy 'magic'.*accepted: all-gpu"),
    ("workloads", ["exam", "poetry"], "unknown workload 'poetry'.*accepted: exam"),
])
def test_check_config_names_accepted_values(key, value, message):
    config = load("config.yaml")
    config[key] = value
    with pytest.raises(ConfigError, match=message):
        check_config(config)


@pytest.mark.parametrize("key,folder", [("gpu_results", "results/gpu/no_such_campaign"),
                                        ("accelerate_results", "results/gpu/paper_shape_h200")])
def test_a_committed_results_folder_without_records_is_refused(key, folder):
    config = config_of("test.yaml")
    config[key] = [*config[key], folder]
    with pytest.raises(ConfigError, match=f"{key}: '{folder}' holds no"):
        check_config(config)


def test_unknown_family_is_refused():
    config = config_of("test.yaml")
    config["models"][0]["tiny"]["family"] = "llama"
    with pytest.raises(ConfigError, match="unknown family 'llama'.*accepted: deepseek_v2"):
        check_config(config)


def test_schema_rejects_a_bad_config(tmp_path):
    bad = config_of("test.yaml")
    bad["batches"] = [0]
    bad["surprise"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    done = snake("-n", "--configfile", str(path))
    assert done.returncode != 0
    assert "surprise" in done.stdout + done.stderr  # the schema names the offending key


def test_default_dry_run_plans_every_run():
    config = load("config.yaml")
    check_config(config)
    paths = run_paths(config)
    # every policy x budget (all-gpu only at its own) x workload x batch
    n_policies = len(config["policies"]) - 1
    assert len(paths) == (n_policies * len(config["budgets"]) + 1) * len(config["workloads"]) * len(config["batches"])
    done = snake("-n", "--forceall", "-q")
    assert done.returncode == 0, done.stderr[-2000:]


def test_ci_grid_end_to_end(tmp_path):
    """config/test.yaml in a scratch copy of the workflow: every table and figure appears, a rerun does nothing."""
    work = tmp_path / "wf"
    work.mkdir()
    for item in ("Snakefile", "config", "workflow", "profiles"):
        src = ROOT / item
        (work / item).symlink_to(src, target_is_directory=src.is_dir())
    (work / "resources").symlink_to(ROOT / "resources", target_is_directory=True)
    (work / "results").mkdir()
    (work / "results/gpu").symlink_to(ROOT / "results/gpu", target_is_directory=True)  # committed measurements
    (work / "results/paper-h200").symlink_to(ROOT / "results/paper-h200", target_is_directory=True)  # H200 profile
    (ROOT / "resources").mkdir(exist_ok=True)
    done = snake("--cores", "2", "--configfile", "config/test.yaml", cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    config = config_of("test.yaml")
    for path in run_paths(config):
        assert (work / path).is_file(), path
    import pandas as pd

    perf = pd.read_csv(work / "results/tables/perf.csv")
    assert len(perf) == len(run_paths(config))
    for col in ("model", "gpu", "measured", "budget_gb", "policy", "batch", "workload", "ttft_s", "tpot_s",
                "hit_rate", "bytes_h2d", "cpu_experts", "substitutions"):
        assert col in perf.columns
    assert perf.loc[perf.policy == "all-gpu", "hit_rate"].eq(1.0).all()
    # the toy paper shape replays tiny-olmoe's routing with the same experts and top-k, so every policy that
    # does not predict decides exactly as on tiny-olmoe itself (random weights and all)
    key = ["policy", "budget", "workload", "batch"]
    src, shape = (perf[perf.model == m].set_index(key).sort_index() for m in ("tiny-olmoe", "tiny-qwen2-57b-shape"))
    exact = ["lru", "belady", "all-gpu"]
    assert src.loc[exact, "hit_rate"].equals(shape.loc[exact, "hit_rate"])
    assert src.loc[exact, "loads"].equals(shape.loc[exact, "loads"])
    assert shape.loc["smoe", "substitutions"].sum() > 0
    for fig in ("fig11_tpot", "fig12_hit_rate", "fig13_ttft", "fig14_ablation", "fig5_score_by_rank", "fig7_reuse_by_rank"):
        assert (work / "figures" / f"{fig}.pdf").stat().st_size > 1000
    gpu = pd.read_csv(work / "results/tables/perf_gpu.csv")  # committed GPU runs + cost-model rows
    measured = gpu[gpu.measured.astype(bool)]
    assert set(measured.gpu) == {"h200", "h100"} and measured.emulated.any() and (~measured.emulated).any()
    # the H100 rows: the forty-fifth and fifty-fifth to fifty-seventh campaigns' Qwen2-57B shape, run without a floor
    # (`paper_shape.py --no-floor`), so no bound; the forty-eighth's to fifty-fourth's deepseek and XVERSE shapes, each
    # process with its floor, so every row has one
    h100 = measured[measured.gpu == "h100"]
    nofloor = h100[h100.source.str.startswith(tuple(f"paper_shape_h100_s{n}_" for n in (52, 63, 64, 65)))]
    assert len(nofloor) == 83 and "all-gpu" not in set(nofloor.policy)
    assert nofloor.bound_s.isna().all() and nofloor.tpot_over_bound.isna().all()
    floored = h100[h100.source.str.startswith(tuple(f"paper_shape_h100_s{n}_" for n in (56, 57, 58, 59, 60, 61, 62)))]
    assert len(floored) == 204 and floored.policy.eq("all-gpu").sum() == 47 and floored.bound_s.notna().all()
    assert len(floored) + len(nofloor) == len(h100)
    # the paper's GPUs, the H200 and the H100 as measured there, and this machine as the DAG measured it (`cpu`)
    modelled = gpu[~gpu.measured.astype(bool)]
    assert set(modelled.gpu) == {"rtx3080ti-12g", "rtx4060ti-16g", "a6000-48g", "h200", "h100", "cpu"}
    # the H200 is modelled at the rates its machine_profile measurement gives, not the built-in ones
    h200 = json.loads((ROOT / "results/paper-h200/machine/h200.json").read_text())
    assert modelled[modelled.gpu == "h200"].link_gbps.eq(h200["pcie_gbps"]).all()
    h100_rates = json.loads((ROOT / "results/gpu/machine_h100_s57/h100.json").read_text())
    assert modelled[modelled.gpu == "h100"].link_gbps.eq(h100_rates["pcie_gbps"]).all()
    here = json.loads((work / "results/machine/cpu.json").read_text())  # this machine, measured by the DAG
    assert here["name"] == "cpu" and here["pcie_gbps"] is None and here["cpu_mem_gbps"] > 0
    check = pd.read_csv(work / "results/tables/costmodel_validation.csv")
    assert len(check) and check.error.notna().all() and set(check.policy) >= {"lru", "smoe"}
    # the H100's runs are checked against its own profile where their process ran a floor to fit host costs on; the
    # forty-fifth's, with no floor, are left out. The fiftieth's ran at both links: its native runs fit the host costs
    # (`fit_runs`), its emulated ones are held out
    on_h100 = check[check.source.str.startswith("paper_shape_h100_")]
    assert set(on_h100.profile) == {"h100"} and on_h100.error.notna().all()
    assert on_h100.held_out.eq(on_h100.link_gbps.notna()).all()
    assert set(on_h100[~on_h100.held_out].source.str[:len("paper_shape_h100_s5x")]) == {"paper_shape_h100_s58"}
    assert on_h100[on_h100.source.str.startswith("paper_shape_h100_s58")].fit_runs.eq(3).all()
    assert set(on_h100.source.str[:len("paper_shape_h100_s5x")]) == {f"paper_shape_h100_s{n}" for n in (56, 57, 58, 59, 60, 61, 62)}
    assert len(on_h100) == len(floored) - floored.policy.eq("all-gpu").sum()
    # the A/Bs of options measured and taken out again: a row per option; the hits A/B ran its floor both ways, so
    # each option has its own, while the prefetch A/B's floor, which prefetches nothing, is shared
    best = pd.read_csv(work / "results/tables/smoe_vs_best_gpu.csv")
    assert set(best[best.folder.str.startswith("paper_shape_h100_")].gpu) == {"h100"}  # a setting is per GPU
    ab = best[best.folder == "paper_shape_h200_s24_hits_before_plan_b1"]
    assert sorted(ab.hits) == ["after-plan", "before-plan"] and ab.floor_s.nunique() == 2
    ab = best[best.folder == "paper_shape_h200_s23_prefetch_at_b1"]
    assert sorted(ab.prefetch_at) == ["layer", "next-layer"] and ab.floor_s.nunique() == 1
    # a folder that ran several workloads in one process: a row per workload, each against its own floor
    b3 = best[best.folder.isin(["paper_shape_h200_s25_qwen48_b3_ur", "paper_shape_h200_s25_qwen48_b3_lk"])]
    assert sorted(b3.workload) == ["knowledge", "language", "reasoning", "understanding"] and b3.batch.eq(3).all()
    assert b3.floor_s.nunique() == 4
    # a workload cut off before any baseline ran (the process ran out of time): its row, with no best baseline
    cut = best[(best.folder == "paper_shape_h200_s26_xverse16_b1") & (best.workload == "knowledge")]
    assert len(cut) == 1 and cut.floor_s.notna().all() and cut.best_baseline.isna().all()
    assert cut["smoe / best"].isna().all()
    # the load price: a cost-modelling policy prices a load at the emulated link unless pcie_gbps is set (twenty-ninth
    # campaign); before it, at 25 GB/s everywhere, so the XVERSE shape's HybriMoE (6 GB/s) planned for another link
    ab = measured[measured.source.str.startswith("paper_shape_h200_s33_xverse16_link_b1/")].set_index("policy")
    assert ab.load_priced_gbps[["smoe", "hybrimoe"]].eq(6.0).all() and ab.load_priced_gbps[["all-gpu"]].isna().all()
    assert ab.load_priced_gbps[["smoe:pcie_gbps=25", "hybrimoe:pcie_gbps=25"]].eq(25.0).all()
    priced = best.set_index("folder").baselines_priced_at_link
    assert priced[["paper_shape_h200_s33_xverse16_link_b1"]].all()
    assert not priced[["paper_shape_h200_s32_xverse16_b3_r"]].any()
    # every deepseek 12 GB and XVERSE 16 GB cell of Fig. 11 has SMoE beside a HybriMoE priced at the run's link, in
    # one process (twenty-ninth and thirtieth campaigns), which the README's ratios for those shapes quote
    key = ["source", "batch", "workload"]
    hyb = measured[(measured.policy == "hybrimoe") & measured.load_priced_gbps.eq(measured.link_had_gbps)][key]
    both = measured[measured.policy == "smoe"].merge(hyb, on=key)
    cells = set(zip(both.model.str[:3], both.budget_gb, both.batch, both.workload))
    workloads = ("exam", "language", "knowledge", "understanding", "reasoning")
    grid = {(m, gb, b, w) for m, gb in (("dee", 12.0), ("xve", 16.0)) for b in (1, 3) for w in workloads}
    assert grid <= cells, sorted(grid - cells)
    # ... and on the H100 with the graphs default (forty-eighth to fifty-fourth campaigns), each beside its floor, with
    # SMoE under 0.65x of the best baseline of its process in every row, as the README's Fig. 11 summary says
    on = best[best.folder.str.startswith("paper_shape_h100_") & best["smoe / best"].notna() & best.floor_s.notna()]
    on = on[[cell in grid for cell in zip(on.model.str[:3], on.budget_gb, on.batch, on.workload)]]
    assert set(zip(on.model.str[:3], on.budget_gb, on.batch, on.workload)) == grid and on["smoe / best"].lt(0.65).all()
    # ... and in every one of those cells CPU-assist (at XVERSE 16 GB the runner-up at exam) ran in one process beside
    # SMoE and HybriMoE (forty-eighth to fifty-fourth campaigns), with HybriMoE the best baseline there, as the README
    # says
    runs = measured[measured.source.str.startswith("paper_shape_h100_")]
    ran = runs.groupby([runs.source.str.split("/").str[0], "batch", "workload"]).policy.agg(frozenset)
    trio = [k for k, policies in ran.items() if {"smoe", "hybrimoe", "cpu-assist"} <= policies]
    with_cpu = on[pd.MultiIndex.from_frame(on[["folder", "batch", "workload"]]).isin(trio)]
    assert set(zip(with_cpu.model.str[:3], with_cpu.budget_gb, with_cpu.batch, with_cpu.workload)) == grid
    assert with_cpu.best_baseline.eq("hybrimoe").all()
    # ... and the Qwen2-57B shape's 48 GB cells on the H100, with no floor (forty-fifth campaign on exam, fifty-fifth on
    # the other four workloads), and its 40 and 64 GB exam cells (fifty-sixth and fifty-seventh): SMoE under 0.65x of
    # HybriMoE, the best baseline, in all fourteen (in each process), as the README says
    qwen = best[best.folder.str.startswith("paper_shape_h100_") & best.model.str.startswith("qwen")]
    cells48 = {(48.0, b, w) for b in (1, 3) for w in workloads}
    sweep = {(gb, b, "exam") for gb in (40.0, 64.0) for b in (1, 3)}
    assert set(zip(qwen.budget_gb, qwen.batch, qwen.workload)) == cells48 | sweep
    assert qwen.floor_s.isna().all() and qwen.best_baseline.eq("hybrimoe").all() and qwen["smoe / best"].lt(0.65).all()
    # ... and so has every other deepseek and XVERSE setting the README lists (thirtieth to thirty-second campaigns)
    others = {(m, gb, 1, w) for m, gb in (("dee", 16.0), ("xve", 12.0)) for w in workloads}
    others |= {("dee", 16.0, 3, "exam"), ("xve", 12.0, 3, "exam")}
    others |= {("dee", 8.0, 1, w) for w in workloads} | {("xve", 24.0, 1, w) for w in workloads}
    others |= {("dee", 8.0, 3, "exam"), ("xve", 24.0, 3, "exam")}
    others |= {("xve", 12.0, 3, w) for w in ("reasoning", "language")}
    others |= {("dee", 16.0, 3, w) for w in ("reasoning", "language")}  # thirty-second campaign
    assert others <= cells, sorted(others - cells)
    # beside every offloading baseline but on-demand (thirty-fifth campaign: deepseek 8 GB at batch 1 on four workloads,
    # XVERSE 24 GB on two at batch 1 and one at batch 3, where the call's time ran out before fifo and cpu-assist),
    # HybriMoE is the best baseline in every row and SMoE under 0.65x of it, as the README says
    s39 = best[best.folder.str.startswith("paper_shape_h200_s39_")]
    assert len(s39) == 7 and s39.best_baseline.eq("hybrimoe").all() and s39["smoe / best"].lt(0.65).all()
    ran = measured[measured.source.str.startswith("paper_shape_h200_s39_")]
    per_cell = ran.groupby([ran.source.str.split("/").str[0], "batch", "workload"]).policy.agg(frozenset)
    full = {"all-gpu", "smoe", "hybrimoe", "moe-infinity", "lru", "lfu", "fifo", "cpu-assist"}
    assert sorted(s == full for s in per_cell) == [False] + [True] * 6
    assert all(s >= full - {"fifo", "cpu-assist"} for s in per_cell)
    # a baseline run with parameters set counts as that baseline: on the H200's own link, HybriMoE priced at the
    # measured copy rate (55 GB/s) beside its default 25 is the best baseline, and the setting is priced at the link
    own = best[best.folder == "paper_shape_h200_s35_qwen48_own"]
    assert len(own) == 2 and own.best_baseline.eq("hybrimoe:pcie_gbps=55").all()
    assert own.baselines_priced_at_link.all()
    # accelerate at each shape's budgets, against the committed runs at the same budget (Qwen2-57B: 44 GiB, 40 and 48)
    hf = pd.read_csv(work / "results/tables/accelerate_gpu.csv")
    smoe = hf[hf.policy == "smoe"]
    assert sorted({(m[:3], b) for m, b in zip(smoe.model, smoe.budget_gb)}) == [
        ("dee", 8), ("dee", 12), ("dee", 16), ("qwe", 40), ("qwe", 48), ("xve", 12), ("xve", 16)]
    assert hf.policy.eq("all-gpu").any() and hf.policy.eq("hybrimoe").any()
    assert set(hf.gpu) == {"h200"}  # accelerate ran on the H200: the H100's runs are not set against it
    for fig in ("fig11_tpot", "fig12_hit_rate", "fig13_ttft", "fig14_ablation"):  # the GPU runs' analogues
        assert (work / f"figures/{fig}_gpu.pdf").stat().st_size > 1000, fig
    acc = pd.read_csv(work / "results/tables/accuracy.csv")  # all-gpu, smoe at 0.25 and 0.5, skip at 0.25
    assert sorted(set(zip(acc.policy, acc.alpha.fillna(0)))) == [("all-gpu", 0), ("skip", 0.25), ("smoe", 0.25),
                                                                 ("smoe", 0.5)]
    assert acc.n_docs.eq(4).all() and acc.task.eq("smoe_arc_easy").all()
    table4 = pd.read_csv(work / "results/tables/table4_accuracy_vs_alpha.csv")
    assert list(table4.columns) == ["model", "task", "moe", "smoe@0.25", "smoe@0.5"]
    again = snake("--configfile", "config/test.yaml", cwd=work)  # no --cores: profiles/default gives them
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Nothing to be done" in again.stdout + again.stderr
    report = snake("--report", "report.html", "--configfile", "config/test.yaml", cwd=work)
    assert report.returncode == 0, report.stderr[-2000:]
    assert (work / "report.html").stat().st_size > 100_000


def test_full_smolmoe_config_plans_the_model_build_and_keeps_its_outputs_apart():
    config = load("smolmoe-full.yaml")
    check_config(config)
    done = snake("-n", "--forceall", "--configfile", "config/smolmoe-full.yaml")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-2000:]
    for expected in ("rule smolmoe_model", "rule fetch_smollm2", "models/smolmoe-135m/smolmoe.json",
                     "results/smolmoe-full/tables/perf.csv", "results/smolmoe-full/figures/fig12_hit_rate.pdf",
                     "results/smolmoe-full/accuracy/smolmoe-135m/dense/dense/a0.json",
                     "results/smolmoe-full/accuracy/smolmoe-135m/s640/score-lower/a0.25.json",
                     "results/smolmoe-full/tables/table4_accuracy_vs_alpha.csv",
                     "results/smolmoe-full/prompts/exam.jsonl",
                     "results/smolmoe-full/runs/cpu/smolmoe-135m/s480/smoe/exam/b3.json",
                     "results/smolmoe-full/traces/cpu/smolmoe-135m/s480/exam/b1.pt"):
        assert expected in out, expected
    for default in (" results/tables/perf.csv", " figures/fig12", " results/runs/", " results/prompts/",
                    " results/traces/"):
        assert default not in out, default  # the default's stay untouched


def test_slurm_profile_sizes_every_job():
    done = snake("-n", "--forceall", "--workflow-profile", "workflow/profiles/slurm", "--configfile", "config/test.yaml")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-2000:]
    jobs = out.split("\nrule ")[1:]
    sized = {j.split(":")[0]: j for j in jobs}
    assert "mem_mb=16000" in sized["bench"] and "runtime=120" in sized["bench"] and "cpus_per_task=4" in sized["bench"]
    assert "gpu=0" in sized["bench"]  # a CPU grid's benchmarks ask for no GPU
    assert "runtime=240" in sized["accuracy"] and "mem_mb=4000" in sized["perf_table"]


def _slurm_up() -> bool:
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return ping.returncode == 0 and "UP" in ping.stdout


@pytest.mark.skipif(not _slurm_up(), reason="no SLURM controller answers `scontrol ping` (start one with "
                    "workflow/profiles/slurm/localhost.sh; .ci/run does where it can)")
def test_slurm_localhost_runs_the_ci_grid(tmp_path):
    """config/test.yaml through the slurm profile on a real (one-node) SLURM: every job an sbatch job, job states
    read with squeue (no accounting database), every table and figure made. Sizes are cut to the small node."""
    work = tmp_path / "wf"
    work.mkdir()
    for item in ("Snakefile", "config", "workflow", "profiles", "resources"):
        (work / item).symlink_to(ROOT / item, target_is_directory=(ROOT / item).is_dir())
    (work / "results").mkdir()
    for committed in ("gpu", "paper-h200"):  # H200 measurements and the H200's machine profile
        (work / "results" / committed).symlink_to(ROOT / "results" / committed, target_is_directory=True)
    rules = ("smolmoe_model", "bench", "bench_belady", "trace_for_belady", "accuracy")
    done = snake("--workflow-profile", "workflow/profiles/slurm", "--configfile", "config/test.yaml",
                 "--slurm-status-command", "squeue", "--slurm-keep-successful-logs", "--latency-wait", "5",
                 "--default-resources", "slurm_partition=debug", "runtime=30", "mem_mb=1000", "cpus_per_task=1",
                 "--set-resources", *[f"{r}:{k}={v}" for r in rules for k, v in (("mem_mb", 2000), ("cpus_per_task", 1))],
                 "--set-threads", *[f"{r}=1" for r in rules[1:]], cwd=work, timeout=1800)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    # one sbatch job per benchmark job (a policy's runs at one budget), each with its SLURM log
    bench_jobs = {"_".join(Path(p).parts[2:6]) for p in run_paths(config_of("test.yaml"))}  # gpu_model_budget_policy
    logs = work / ".snakemake/slurm_logs"
    logged = {d.name for rule in ("rule_bench", "rule_bench_belady") for d in (logs / rule).iterdir()
              if any(d.glob("*.log"))}
    assert bench_jobs <= logged, bench_jobs - logged
    assert out.count("has been submitted with SLURM jobid") >= len(bench_jobs)
    for path in ("results/tables/perf.csv", "results/tables/accuracy.csv", "results/tables/perf_gpu.csv",
                 "figures/fig11_tpot.pdf", "figures/fig14_ablation.pdf", "figures/fig11_tpot_gpu.pdf"):
        assert (work / path).stat().st_size > 0, path


def test_accuracy_grid_and_its_checks():
    config = load("smolmoe-full.yaml")
    runs = accuracy_runs(config)
    assert runs[:2] == [dict(model="smolmoe-135m", budget="dense", policy="dense", alpha=0),
                        dict(model="smolmoe-135m", budget="s1920", policy="all-gpu", alpha=0)]
    alphas = (0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6)  # Table IV's grid
    assert {(r["policy"], r["alpha"]) for r in runs[2:]} == {("smoe", a) for a in alphas} | {
        ("skip", 0.25), ("score-lower", 0.25)}
    assert len(runs) == 2 + len(alphas) + 2
    config["accuracy"]["tasks"] = ["smoe_hellaswag", "hellaswag"]
    with pytest.raises(ConfigError, match="unknown task 'hellaswag'.*accepted: smoe_hellaswag"):
        check_config(config)


def test_paper_config_plans_the_three_shapes_on_smolmoe_routing():
    config = load("paper.yaml")
    check_config(config)
    assert accuracy_runs(config) == []  # no accuracy section; shapes never get one
    done = snake("-n", "--forceall", "--configfile", "config/paper.yaml")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-2000:]
    for expected in ("results/paper/runs/h200/qwen2-57b-a14b-shape/48gb/smoe/exam/b3.json",
                     "results/paper/runs/h200/deepseek-moe-16b-shape/12gb/lru/reasoning/b1.json",
                     "results/paper/runs/h200/xverse-moe-a4.2b-shape/s1792/all-gpu/knowledge/b1.json",
                     "results/paper/traces/h200/smolmoe-135m/s480/exam/b1.pt"):  # what the shapes replay
        assert expected in out, expected
    bad = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    bad["models"][1]["shape"]["replay"] = "qwen2-57b-a14b-shape"
    with pytest.raises(ConfigError, match="not a checkpoint model of this config; accepted: smolmoe-135m"):
        check_config(bad)
    bad["models"][1]["shape"] = {"name": "mixtral-shape", "replay": "smolmoe-135m"}
    with pytest.raises(ConfigError, match="unknown shape 'mixtral-shape'"):
        check_config(bad)


def test_gpu_config_replays_carried_traces_and_builds_nothing(tmp_path):
    """config/paper-h200.yaml routes its shape by traces in a folder (what is carried to a GPU machine): the plan
    has the benchmark runs and the tables, and no model build, data fetch or prompt job; a folder without the
    traces is refused by name before any job runs."""
    config = load("paper-h200.yaml")
    config["models"][0]["shape"]["replay_dir"] = str(tmp_path / "traces")
    with pytest.raises(ConfigError, match=f"replays traces from '{tmp_path}/traces', which lacks 1 of them, e.g. "
                                          f"'{tmp_path}/traces/exam/b1.pt'"):
        check_config(config)
    (tmp_path / "traces/exam").mkdir(parents=True)
    (tmp_path / "traces/exam/b1.pt").write_bytes(b"")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    done = snake("-n", "--forceall", "--configfile", str(tmp_path / "cfg.yaml"))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-2000:]
    assert "results/paper-h200/runs/h200/deepseek-moe-16b-shape/12gb/smoe/exam/b1.json" in out
    assert str(tmp_path / "traces/exam/b1.pt") in out  # the bench jobs read the carried trace
    jobs = {line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("rule ")}
    assert jobs == {"bench", "perf_table", "figure", "machine_profile", "all"}, jobs  # nothing built or fetched
    assert "results/paper-h200/machine/h200.json" in out  # the machine's rates, measured there
    (tmp_path / "traces/exam/b3.pt").write_bytes(b"")  # widened from the command line, as the config's comment says
    done = snake("-n", "--forceall", "--configfile", str(tmp_path / "cfg.yaml"), "--config", "batches=[1,3]")
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    assert "deepseek-moe-16b-shape/12gb/smoe/exam/b3.json" in done.stdout + done.stderr
    both = {**config["models"][0]["shape"], "replay": "smolmoe-135m"}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**config, "models": [{**config["models"][0], "shape": both}]}))
    done = snake("-n", "--configfile", str(tmp_path / "bad.yaml"))
    assert done.returncode != 0 and "is valid under each of" in done.stdout + done.stderr


def test_heal_rule_plans_a_recipe_and_a_model_can_be_built_from_it(tmp_path):
    done = snake("-n", "-p", "--forceall", "results/heal/e64k24s384/e64k24s384.safetensors")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-2000:]
    assert "heal --topology e64k24s384 --steps 760 --batch 64 --plain-per-prompt 0" in out and "gpu=1" in out
    config = load("config.yaml")
    config["models"][0]["smolmoe"] = {"recipe": "results/heal/e64k24s384/e64k24s384.safetensors"}
    config["heal"] = {"steps": 2000, "plain_per_prompt": 6}
    path = tmp_path / "healed.yaml"
    path.write_text(yaml.safe_dump(config))
    done = snake("-n", "-p", "--forceall", "models/smolmoe-135m/smolmoe.json", "--configfile", str(path))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-2000:]
    assert "rule heal:" in out and "--steps 2000 --batch 64 --plain-per-prompt 6" in out


def test_generation_config_plans_its_accuracy_jobs_apart():
    config = load("smolmoe-gen.yaml")
    check_config(config)
    assert config["accuracy"]["tasks"] == ["smoe_gsm8k", "smoe_triviaqa", "smoe_shakespeare"]
    done = snake("-n", "--forceall", "--configfile", "config/smolmoe-gen.yaml", "--",
                 "results/smolmoe-gen/tables/accuracy.csv")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-2000:]
    for expected in ("results/smolmoe-gen/accuracy/smolmoe-135m/dense/dense/a0.json",
                     "results/smolmoe-gen/accuracy/smolmoe-135m/s640/smoe/a0.25.json",
                     "results/smolmoe-gen/accuracy/smolmoe-135m/s640/score-lower/a0.25.json"):
        assert expected in out, expected
