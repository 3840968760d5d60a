"""Snakemake script of rule `gpu_tables`: committed GPU measurements (benchmarks/paper_shape.py outputs) ->
  perf_gpu.csv                one row per measured run (measured=True; `emulated` where the link was slowed to
                              a paper GPU's PCIe; `skeleton`: what of the decode layers ran as CUDA graphs,
                              `layer` (all but the routed experts), `attention` (every run before
                              the block pieces, ea08add) or `eager`;
                              `grouped`: how decode computed a layer's resident experts, `graphs` (read in
                              place by the Triton kernel, replayed as a CUDA graph: the GPU default since
                              2026-12-06), `slots` (the same launched op by op) or `gather` (gathered out of the
                              slots first, every run before 2026-12-01); `block_order`: `router-first` (Qwen2-MoE blocks ran their
                              router before their shared expert) or `hf`; `kv_cache`: `dynamic` (grown each step,
                              every run before 2026-12-01's fourteenth campaign) or `static` (the GPU
                              default since); `prefetch_at`: where a prefetching policy's decode-layer prefetch
                              decision ran, `layer` (within the layer: every run but the nineteenth campaign's
                              A/B, and its rows labelled `@in-layer-prefetch`) or `next-layer` (that A/B's other
                              rows, at 488bbaf); `hits`: when a grouped decode layer's routed, resident
                              experts were queued, `after-plan` (every run but the twentieth campaign's A/B, and
                              its rows labelled `@hits-after-plan`) or `before-plan` (that A/B's other rows, at
                              8eaecbd); `load_priced_gbps`: the link rate a cost-modelling policy (SMoE's
                              balancing, HybriMoE's scheduling) priced a load at, empty for the others: 25 in
                              every run before 2026-12-03's twenty-ninth campaign, since then the run's emulated
                              link unless the policy set `pcie_gbps`); `prefetch_top_share` and
                              `prefetch_routed_share` as the run computed them where they agree with the
                              engine's own count of prefetched experts routed at their layer; where not (runs
                              that replayed several generate calls before 2026-12-05, whose accuracy judged a
                              prefetch against another call's pass), the routed share is the engine's count and
                              the top-score share is left empty,
                              then the cost model's rows for every profile (measured=False), modelled from
                              the native runs' executed plans of every GPU with a machine profile: the
                              paper's GPUs, and the machines measured by the `machine_profile` rule (config
                              `machine_profiles:`: the H200 and the H100; and the machine this config runs
                              on), each replacing the built-in profile of its name; a GPU with none is left
                              out of the cost model, with a message
  costmodel_validation.csv    per offloading run, the cost model's TPOT against the measured one on the machine
                              it ran on, at the run's own link rate; host costs are fitted on the native-link
                              runs, so the emulated-link runs (`held_out`) check it
  smoe_vs_best_gpu.csv        per measured setting (folder, GPU, shape, batch, workload, skeleton, grouped, block
                              order, KV cache, hits and prefetch modes, link): the
                              all-GPU floor, the best offloading baseline and every SMoE variant's TPOT as a
                              multiple of it (a setting run in several rounds: each policy's median); the
                              best baseline is the fastest of every offloading baseline's runs there, those with
                              parameters set (`hybrimoe:pcie_gbps=55`) included;
                              `baselines_priced_at_link`: whether every cost-modelling offloading baseline there
                              ran at least once pricing a load within 10% of the link the run had (emulated, else
                              the measured copy rate): where not, the baseline split its misses between the link
                              and the CPU for another machine, and the ratio flatters SMoE
  ablation_gpu.csv            the paper's Fig. 14 steps (lru, +CE, +CR, +Pre, +BA) where a setting ran them all:
                              TPOT and hit rate per step and the change from the step before
A setting measured in two folders appears twice, told apart by `source`.
"""
import json
import sys
from pathlib import Path

import pandas as pd

from smoe.balance import PCIE_GBPS, load_gbps
from smoe.costmodel import model_measured_runs, profiles_with, skeleton_mode
from smoe.files import env_file, read_jsonl
from smoe.policy import OFFLOADING_BASELINES, base_policy, policy_params

sm = snakemake  # noqa: F821


def load_priced_gbps(rec: dict) -> float | None:
    """The host->device rate a policy's fixed cost model priced one load at in a run record (None: the policy has
    no such model). Records before resolved parameters (the first three campaigns) ran with the 25 GB/s default."""
    p = rec["params"]
    if "pcie_gbps" not in policy_params(p["policy"]):
        return None
    given = p.get("policy_resolved", {"pcie_gbps": p.get("policy_params", {}).get("pcie_gbps", PCIE_GBPS)})
    rate = given.get("pcie_gbps")
    return load_gbps(None if rate is None else float(rate), p.get("link_gbps"))


def prefetch_shares(rec: dict) -> tuple[float | None, float | None]:
    """A run's (top-score, routed) shares of its prefetched experts, as the perf_gpu.csv columns say: the run's own
    where its routed share matches the engine's `prefetch_in_topk` (within half a percent), else (None, the engine's)."""
    row, m = rec["row"], rec["metrics"]
    top, routed = row.get("prefetch_top_share"), row.get("prefetch_routed_share")
    if not m.get("prefetches") or routed is None or pd.isna(routed):
        return top, routed
    engine = m["prefetch_in_topk"] / m["prefetches"]
    return (top, routed) if abs(routed - engine) <= 0.005 else (None, engine)


profiles = profiles_with([json.loads(Path(p).read_text()) for p in sm.input.machines])  # measured rates win
measured, modelled, validation = [], [], []
for path in map(Path, sm.input.runs):  # {stem}.jsonl or {stem}.jsonl.gz, with {stem}_env.json beside it
    records = read_jsonl(path)
    if not records:
        continue
    env = json.loads(env_file(path).read_text())
    rows = pd.DataFrame([r["row"] for r in records])
    if "prefetch_routed_share" in rows:
        rows[["prefetch_top_share", "prefetch_routed_share"]] = [prefetch_shares(r) for r in records]
    skeleton = [skeleton_mode(r["env"]) for r in records]
    grouped = [r["env"].get("grouped_experts", "gather") for r in records]  # GPU runs gathered until 2026-12-01
    order = ["router-first" if r["env"].get("router_first", 0) > 0 else "hf" for r in records]  # hf until 2026-12-01
    kv = [r["env"].get("kv_cache", "dynamic") for r in records]
    at = [r["env"].get("prefetch_at", "layer") for r in records]  # within the layer until 2026-12-02
    hits = ["before-plan" if r["env"].get("hits_before_plan") else "after-plan" for r in records]  # 8eaecbd's A/B only
    measured.append(rows.assign(emulated=rows.link_gbps.notna(), skeleton=skeleton, grouped=grouped, block_order=order,
                                kv_cache=kv, prefetch_at=at, hits=hits,
                                load_priced_gbps=[load_priced_gbps(r) for r in records],
                                link_had_gbps=rows.link_gbps.fillna(env["copy_Bps"] / 1e9),
                                source=f"{path.parent.name}/{path.name}"))
    gpu = records[0]["row"]["gpu"]
    if gpu not in profiles:  # no profile of its rates, built in or measured, to fit host costs on
        print(f"{path}: measured on {gpu}, which has no machine profile (there are: {', '.join(sorted(profiles))}); "
              "the cost model leaves it out", file=sys.stderr)
        continue
    # records older than `policy_resolved` ran with the defaults of their day: the env file states any that changed
    check, model = model_measured_runs(records, env["copy_Bps"] / 1e9, gpu, profiles,
                                       policy_defaults=env.get("policy_defaults"))
    validation += [v | {"source": f"{path.parent.name}/{path.name}"} for v in check]
    modelled += model
table = pd.concat([*measured, pd.DataFrame(modelled).assign(emulated=False)], ignore_index=True)
table.to_csv(sm.output.perf, index=False)
pd.DataFrame(validation).to_csv(sm.output.validation, index=False)

STEPS = ["lru", "smoe-ce", "smoe-ce-cr", "smoe-ce-cr-pre", "smoe"]
runs = pd.concat(measured, ignore_index=True)
runs["folder"] = runs.source.str.split("/").str[0]
# the modes are the `skeleton`, `grouped`, `block_order`, `kv_cache`, `hits` and `prefetch_at` columns; the floor,
# which prefetches nothing, is shared by both `prefetch_at` settings
runs["policy"] = runs.policy.str.replace(
    "@eager-skeleton|@attention-skeleton|@gather-experts|@slots-experts|@hf-block-order|@static-kv|@dynamic-kv"
    "|@in-layer-prefetch"
    "|@hits-after-plan", "", regex=True)
modes = ["skeleton", "grouped", "block_order", "kv_cache", "hits"]
floor_key = ["folder", "model", "batch", "workload", *modes]  # the floor has no budget and prefetches nothing
setting = ["folder", "gpu", "model", "budget_gb", "batch", "workload", *modes, "prefetch_at"]
# a setting run in several rounds (`paper_shape.py --repeats`) counts with its median
floors = runs[runs.policy == "all-gpu"].groupby(floor_key, dropna=False).tpot_s.median()
summary, steps = [], []
for key, group in runs[runs.policy != "all-gpu"].groupby(setting, dropna=False, sort=False):
    named = dict(zip(setting, key))
    floor = floors.get(tuple(named[c] for c in floor_key))
    for link, g in group.groupby(group.link_gbps.fillna(0), sort=False):
        t = g.groupby("policy", sort=False)[["tpot_s", "hit_rate"]].median()
        base = t.tpot_s[t.index.map(base_policy).isin(OFFLOADING_BASELINES)]  # every variant of a baseline
        row = dict(zip(setting, key), link_gbps=link or None, floor_s=floor)
        if len(base):
            priced = g[g.policy.map(base_policy).isin(OFFLOADING_BASELINES) & g.load_priced_gbps.notna()]
            at_link = (priced.load_priced_gbps / priced.link_had_gbps - 1).abs() <= 0.1
            row |= {"best_baseline": base.idxmin(), "best_baseline_tpot_s": base.min(),
                    "baselines_priced_at_link": bool(at_link.groupby(priced.policy.map(base_policy)).any().all())}
            for p in t.index[t.index.str.startswith("smoe")]:
                row[f"{p} / best"] = t.tpot_s[p] / base.min()
        summary.append(row)
        if set(STEPS) <= set(t.index):
            for prev, step in zip([None, *STEPS], STEPS):
                steps.append(dict(zip(setting, key), link_gbps=link or None, step=step, tpot_s=t.tpot_s[step],
                                  hit_rate=t.hit_rate[step],
                                  tpot_change=None if prev is None else t.tpot_s[step] / t.tpot_s[prev] - 1,
                                  hit_change=None if prev is None else t.hit_rate[step] / t.hit_rate[prev] - 1))
pd.DataFrame(summary).to_csv(sm.output.summary, index=False)
pd.DataFrame(steps, columns=[*setting, "link_gbps", "step", "tpot_s", "hit_rate", "tpot_change", "hit_change"]) \
    .to_csv(sm.output.ablation, index=False)
