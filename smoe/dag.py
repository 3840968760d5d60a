"""The reproduction DAG's logic, kept out of the Snakefile: config checks, result paths, targets.

Where it sits: `workflow/rules/common.smk` validates the config against `config/schema.yaml` (shape and
types) and then calls `check_config` here (names against the registries: policies, workloads, model
families), so a bad config fails before any job runs, naming the accepted values. Result paths are a pure
function of the parameters:

    results/runs/{gpu}/{model}/{budget}/{policy}/{workload}/b{batch}.json

`budget` is `s<N>` (N expert slots, `--cache-experts`) or `<X>gb` (`--budget-gb X`).
"""
from __future__ import annotations

import re

from .errors import SmoeError

RUN = "results/runs/{gpu}/{model}/{budget}/{policy}/{workload}/b{batch}.json"


class ConfigError(SmoeError):
    """A config value the harness does not know."""


def budget_args(budget: str) -> dict:
    """'s24' -> {'cache_experts': 24}; '12gb' -> {'budget_gb': 12.0}."""
    if m := re.fullmatch(r"s(\d+)", budget):
        return {"cache_experts": int(m.group(1))}
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)gb", budget):
        return {"budget_gb": float(m.group(1))}
    raise ConfigError(f"budget {budget!r} is neither s<slots> (e.g. s24) nor <GiB>gb (e.g. 12gb)")


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
    for spec in config["models"]:
        name = spec["name"]
        fam = spec.get("tiny", {}).get("family")
        if fam is not None and fam not in FAMILIES:
            raise ConfigError(f"model {name!r}: unknown family {fam!r}; accepted: {', '.join(sorted(FAMILIES))}")
        for b in spec.get("budgets", config["budgets"]) + [spec["all_gpu_budget"]]:
            budget_args(b)


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


def run_paths(config: dict) -> list[str]:
    return [RUN.format(**r) for r in runs(config)]
