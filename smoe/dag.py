"""The reproduction DAG's logic, kept out of the Snakefile: config checks, result paths, targets.

Where it sits: `workflow/rules/common.smk` validates the config against `config/schema.yaml` (shape and
types) and then calls `check_config` here (names against the registries: policies, workloads, model
families), so a bad config fails before any job runs, naming the accepted values. Result paths are a pure
function of the parameters:

    {results_dir}/runs/{gpu}/{model}/{budget}/{policy}/{workload}/b{batch}.json

(`results_dir` defaults to `results`; a second config such as smolmoe-full keeps its runs and traces apart).

`budget` is `s<N>` (N expert slots, `--cache-experts`) or `<X>gb` (`--budget-gb X`). Accuracy records
(lm-eval through the runtime, config section `accuracy`) go to

    {accuracy_dir}/{model}/{budget}/{policy}/a{alpha}.json

with budget `dense`, policy `dense` for a smolmoe model's dense teacher and the all-GPU budget for `all-gpu`.
"""
from __future__ import annotations

import re
from pathlib import Path

from .errors import SmoeError

RUN = "{results}/runs/{gpu}/{model}/{budget}/{policy}/{workload}/b{batch}.json"
ACCURACY = "{dir}/{model}/{budget}/{policy}/a{alpha}.json"
# config keys listing folders of committed GPU measurements -> the records each folder must hold
COMMITTED = {"gpu_results": ("*.jsonl", "*.jsonl.gz"), "accelerate_results": ("*gib.json",)}


class ConfigError(SmoeError):
    """A config value the harness does not know."""


def budget_args(budget: str) -> dict:
    """'s24' -> {'cache_experts': 24}; '12gb' -> {'budget_gb': 12.0}."""
    if m := re.fullmatch(r"s(\d+)", budget):
        return {"cache_experts": int(m.group(1))}
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)gb", budget):
        return {"budget_gb": float(m.group(1))}
    raise ConfigError(f"budget {budget!r} is neither s<slots> (e.g. s24) nor <GiB>gb (e.g. 12gb)")


def numbers_from_cli(config: dict) -> None:
    """`snakemake --config batches=[1,3]` hands the list over as strings ('1', '3'): read the batch sizes as the
    integers they spell, so the command line widens a config the way its file would. Anything else is left for
    the schema to refuse."""
    batches = config.get("batches")
    if isinstance(batches, list):
        config["batches"] = [int(b) if isinstance(b, str) and b.isdigit() else b for b in batches]


def check_config(config: dict) -> None:
    from .families import FAMILIES
    from .policy import policy_names
    from .workloads import WORKLOADS

    known = policy_names()
    for p in config["policies"]:
        if p not in known:
            raise ConfigError(f"unknown policy {p!r} in the config; accepted: {', '.join(known)}")
    for w in config["workloads"]:
        if w not in WORKLOADS:
            raise ConfigError(f"unknown workload {w!r} in the config; accepted: {', '.join(WORKLOADS)}")
    names = [m["name"] for m in config["models"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be unique, got {names}")
    for p in config.get("accuracy", {}).get("policies", []):
        if p not in known:
            raise ConfigError(f"unknown policy {p!r} under accuracy.policies; accepted: {', '.join(known)}")
    from .eval_tasks import TASKS

    for t in config.get("accuracy", {}).get("tasks", []):
        if t not in TASKS:
            raise ConfigError(f"unknown task {t!r} under accuracy.tasks; accepted: {', '.join(TASKS)}")
    from .shapes import SHAPES

    for spec in config["models"]:
        name = spec["name"]
        if "shape" in spec:
            shape, source = spec["shape"]["name"], spec["shape"].get("replay")
            if shape not in SHAPES:
                raise ConfigError(f"model {name!r}: unknown shape {shape!r}; accepted: {', '.join(SHAPES)}")
            if source is None:
                missing = [t for t in replay_traces(config, name) if not Path(t).is_file()]
                if missing:
                    raise ConfigError(f"model {name!r} replays traces from {spec['shape']['replay_dir']!r}, which lacks "
                                      f"{len(missing)} of them, e.g. {missing[0]!r} (one per workload and batch)")
            elif source not in names or "shape" in model_spec(config, source):
                raise ConfigError(f"model {name!r} replays {source!r}, which is not a checkpoint model of this "
                                  f"config; accepted: {', '.join(n for n in names if 'shape' not in model_spec(config, n))}")
        fam = spec.get("tiny", {}).get("family")
        if fam is not None and fam not in FAMILIES:
            raise ConfigError(f"model {name!r}: unknown family {fam!r}; accepted: {', '.join(sorted(FAMILIES))}")
        for b in spec.get("budgets", config["budgets"]) + [spec["all_gpu_budget"]]:
            budget_args(b)
    for key, patterns in COMMITTED.items():  # a folder listed with no records in it would table as nothing, silently
        for folder in config.get(key, []):
            if not any(next(Path(folder).glob(p), None) for p in patterns):
                raise ConfigError(f"{key}: {folder!r} holds no {' or '.join(patterns)} records (a folder of "
                                  "committed GPU measurements, relative to the project root)")


def runs(config: dict) -> list[dict]:
    """Every benchmark run of the config, as wildcard dicts."""
    out = []
    for spec in config["models"]:
        model = spec["name"]
        for policy in config["policies"]:
            budgets = [spec["all_gpu_budget"]] if policy == "all-gpu" else spec.get("budgets", config["budgets"])
            for budget in budgets:
                for workload in config["workloads"]:
                    for batch in config["batches"]:
                        out.append(dict(gpu=config["gpu"], model=model, budget=budget, policy=policy,
                                        workload=workload, batch=batch))
    return out


def model_spec(config: dict, name: str) -> dict:
    return next(m for m in config["models"] if m["name"] == name)


TRACE = "{results}/traces/{gpu}/{model}/{budget}/{workload}/b{batch}.pt"


def replay_traces(config: dict, name: str) -> list[str]:
    """The traces a shape model replays, in (workload, batch) order: those `trace_for_belady` records for the
    model it names (lru at that model's first budget), or those in its `replay_dir`."""
    shape = model_spec(config, name)["shape"]
    if "replay_dir" in shape:
        return [f"{shape['replay_dir']}/{w}/b{b}.pt" for w in config["workloads"] for b in config["batches"]]
    source = model_spec(config, shape["replay"])
    budget = source.get("budgets", config["budgets"])[0]
    return [TRACE.format(results=results_dir(config), gpu=config["gpu"], model=source["name"], budget=budget,
                         workload=w, batch=b) for w in config["workloads"] for b in config["batches"]]


def results_dir(config: dict) -> str:
    return config.get("results_dir", "results")


def run_paths(config: dict) -> list[str]:
    return [RUN.format(results=results_dir(config), **r) for r in runs(config)]


def accuracy_runs(config: dict) -> list[dict]:
    """Every accuracy evaluation of the config (section `accuracy`), as wildcard dicts: per model, the MoE
    with every expert resident (all-gpu), smoe at each of `alphas` and each of `policies` at the config's
    `alpha` on the accuracy budget, and the dense teacher of smolmoe models when `dense` is set."""
    acc = config.get("accuracy")
    if not acc:
        return []
    out = []
    for spec in config["models"]:
        if "shape" in spec:  # random weights: no accuracy to measure
            continue
        model = spec["name"]
        if acc.get("dense", True) and "smolmoe" in spec:
            out.append(dict(model=model, budget="dense", policy="dense", alpha=0))
        out.append(dict(model=model, budget=spec["all_gpu_budget"], policy="all-gpu", alpha=0))
        settings = {("smoe", a) for a in acc.get("alphas", [])} | {(p, config["alpha"]) for p in
                                                                 ["smoe", *acc.get("policies", [])]}
        for policy, alpha in sorted(settings):
            out.append(dict(model=model, budget=acc["budget"], policy=policy, alpha=alpha))
    return out


def accuracy_paths(config: dict) -> list[str]:
    folder = config.get("accuracy_dir", "results/accuracy")
    return [ACCURACY.format(dir=folder, **r) for r in accuracy_runs(config)]
