"""Paper-scale decoding: the paper's model shapes with random weights and replayed routing, every policy,
device-memory budgets around the paper's GPUs, the workloads and batch sizes, side by side in one process.

    python benchmarks/paper_shape.py --shape qwen2-57b-a14b-shape --traces results/traces/replay/smolmoe-135m \\
        --budgets-gb 48 --out results/gpu/paper_shape_h200          # on the GPU machine

The weights are drawn on the GPU (`smoe.shapes.RandomSource`) and the routed experts filled into one pinned
host store that every run shares. Each run replays the decode trace of smolmoe-135m for its workload and
batch (`smoe.replay`): the model's i-th MoE layer routes as smolmoe-135m's i-th layer did, with the shape's
own top-k, and prefetching policies see the predictions recorded with the trace. The all-GPU run is the
floor; every row also gives the physical bound max(all-GPU TPOT, decode bytes over PCIe per step / the
measured pinned copy rate) and TPOT as a multiple of it.

With --link-gbps 0 G the offloading policies run at this machine's own link and again with the host->GPU link
emulated at G GB/s (`smoe.hardware.EmulatedLink`: each copy is held on its stream until bytes / G has passed), the
paper's PCIe on this GPU: such rows say `link_gbps` = G and their bound uses G; the all-GPU floor runs once, on the
real link (it copies nothing while decoding). Files get a `_link{G}` suffix per emulated rate. Every row's
`copy_gbps` is the rate its copies got, measured on the copy stream (holds included): within a few percent of G
where the emulation held its rate (the hold is tuned to it from these measurements as the run goes).

With --predictions recorded oracle every prefetching policy runs again with oracle predictions (the scores each
predicted layer will route by, from the trace; rows `@oracle-predictions`): what a perfect predictor could gain, a
measurement and never a contender.

With --routing readback known every setting runs again with its routing known on the host (rows `@known-routing`,
the floor's too): the engine takes each layer's scores and the policy its predictions from the trace instead of
reading them back, so the host never waits for the device inside a decode step and queues layers ahead of it. The
device still routes and predicts; the decisions are the same. What taking the decisions off the host's critical path
(planning on the device) could gain at most: a measurement and never a contender.

With --repeats N every setting of a workload and batch runs N times, in rounds whose offloading settings alternate
their order (A B, B A, ...), each round with its own floor first: an A/B measured so is not one pair against the
host's spread (20-40% between runs of one process here).

The records keep every run's executed plans, from which the DAG's `gpu_tables` rule fits the cost model
(`smoe.costmodel.model_measured_runs`) and models the paper's GPUs.

Writes to --out, appending as each run finishes (an interrupted sweep keeps what it measured):
  {shape}.jsonl   one run record per line (parameters, every metric, prefetch accuracy, executed plans)
  {shape}.csv     the table, rewritten after every run
  {shape}_env.json  device, copy rates, host-store fill time, the exact command
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoe.costmodel import SKELETON_MODES  # noqa: E402
from smoe.errors import SmoeError  # noqa: E402
from smoe.files import write_csv  # noqa: E402
from smoe.hardware import gpu_model, h2d_rate  # noqa: E402
from smoe.policy import make_policy, parse_policy_spec, policy_names  # noqa: E402
from smoe.replay import filled_host_store, run_replayed, trace_provenance  # noqa: E402
from smoe.runtime import KV_CACHES, default_kv_cache  # noqa: E402
from smoe.shapes import SHAPES, RandomSource  # noqa: E402

COLUMNS = ["model", "gpu", "measured", "budget_gb", "policy", "batch", "workload", "ttft_s", "tpot_s", "tpot_p50_s",
           "tpot_p90_s", "queue_s", "hit_rate", "bytes_h2d", "cpu_experts", "cpu_time_s", "substitutions", "prefetches",
           "prefetch_top_share", "prefetch_routed_share", "policy_time_s", "check_time_s", "prefetch_time_s",
           "predict_time_s", "copy_wait_s", "victim_wait_s", "slots", "link_gbps", "copy_gbps", "bound_s",
           "tpot_over_bound", "repeat"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", required=True, choices=list(SHAPES))
    ap.add_argument("--layers", type=int, help="decoder layers (default: the shape's 28); fewer is stated in "
                    "every row's model name")
    ap.add_argument("--tiny", action="store_true", help="the shape's layers, experts and top-k at toy widths "
                    "(a CPU smoke test of this script, not a measurement)")
    ap.add_argument("--traces", required=True, help="folder of {workload}/b{batch}.pt decode traces")
    size = ap.add_mutually_exclusive_group(required=True)
    size.add_argument("--budgets-gb", type=float, nargs="+", help="device memory budgets")
    size.add_argument("--slots", type=int, nargs="+", help="expert slots instead of a budget (e.g. a GPU run's "
                      "`slots`, to replay its decisions at toy widths on a CPU)")
    ap.add_argument("--policies", nargs="+", default=None, help="default: every registered policy but belady; "
                    "NAME:PARAM=VALUE,... runs a policy with parameters set (a variant, named so in the rows)")
    ap.add_argument("--workloads", nargs="+", default=["exam", "language", "knowledge", "understanding", "reasoning"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--segments", type=int, help="replay only each trace's first N generate calls (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a policy parameter")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--gpu", help="the `gpu` column (what the rows were timed on); default: the CUDA device's model "
                    "(`h100` for 'NVIDIA H100 80GB HBM3'), and on a CPU `h200`, the profile a CPU rehearsal stands for")
    ap.add_argument("--link-gbps", type=float, nargs="+", default=[0.0], help="host->GPU link rates to run every "
                    "offloading policy at, GB/s, emulated (the paper's PCIe); 0: this machine's own link")
    ap.add_argument("--predictor", nargs="+", default=["graphs"], choices=["graphs", "eager"],
                    help="how prefetching policies run the predictor's decode passes: as CUDA graphs (the runtime's "
                         "default on a GPU) and/or op by op (rows labelled {policy}@eager-predictor); both: side by side")
    ap.add_argument("--skeleton", nargs="+", default=["layer"], choices=list(SKELETON_MODES),
                    help="what of the decoder layers every policy, the floor included, runs at decode as CUDA graphs: "
                         "all but the routed experts (layer, the runtime's default on a GPU), the attention alone "
                         "(rows labelled {policy}@attention-skeleton) and/or nothing (op by op, {policy}@eager-skeleton); "
                         "each against a floor of its own; several: side by side")
    ap.add_argument("--grouped", nargs="+", default=["graphs"], choices=["graphs", "slots", "gather"],
                    help="how every policy, the floor included, computes a decode layer's resident experts in one "
                         "batched product: read in place from the slots by a Triton kernel, replayed as a CUDA graph "
                         "per (experts, tokens) (the runtime's default on a GPU), the same launched op by op (rows "
                         "labelled {policy}@slots-experts) and/or gathered out of the slots first "
                         "({policy}@gather-experts); each against a floor of its own; several: side by side")
    ap.add_argument("--block-order", nargs="+", default=["router-first"], choices=["router-first", "hf"],
                    help="Qwen2-MoE blocks: router before the shared expert, so the device runs the shared expert "
                         "while the host plans (the runtime's default), and/or HF's order (rows labelled "
                         "{policy}@hf-block-order, against a floor of their own); both: side by side")
    ap.add_argument("--kv-cache", nargs="+", choices=KV_CACHES,
                    help="the KV cache: one buffer per layer per generate call, so a decode layer's whole attention "
                         "and the predictor's are one CUDA graph each (the runtime's default on a GPU), and/or grown "
                         "each step (its default on a CPU); rows whose cache is not the device's default are "
                         "labelled {policy}@static-kv or {policy}@dynamic-kv, against a floor of their own; both: "
                         "side by side")
    ap.add_argument("--cpu-threads", type=int, nargs="+", default=[None],
                    help="threads of the CPU-expert worker (default: the runtime's, half the cores); several: every "
                         "policy is run with each, rows labelled {policy}@cpu{N}")
    ap.add_argument("--predictions", nargs="+", default=["recorded"], choices=["recorded", "oracle"],
                    help="what prefetching policies' predictions return: the ones recorded with the trace, or (oracle) "
                         "the scores each predicted layer will route by, the trace's own: how much a perfect "
                         "prediction could gain, a measurement and never a contender (rows `@oracle-predictions`); "
                         "several: each prefetching policy runs with each")
    ap.add_argument("--routing", nargs="+", default=["readback"], choices=["readback", "known"],
                    help="where the host gets each layer's routing and predictions: read back from the device (every "
                         "run), or (known) from the trace, so it never waits for the device inside a decode step: what "
                         "planning on the device could gain at most, a measurement and never a contender (rows "
                         "`@known-routing`, against a floor of their own); both: side by side")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of every setting of a workload and batch: the floor "
                    "first in each, then the offloading settings, in reverse order every other round (A B, B A, ...), so "
                    "a slow stretch of the host or a process's first runs weigh on both sides of an A/B; rows carry "
                    "`repeat` and their round's floor, and the tables take each setting's median")
    ap.add_argument("--profile", action="store_true", help="run each setting under torch.profiler and write its "
                    "op and engine-span tables, the decode steps' device-idle time by host span and their host time "
                    "by span ({stem}_profile_{policy}_{workload}_b{batch}.txt) instead of rows: a profiled run's "
                    "timing is not a measurement")
    ap.add_argument("--no-floor", dest="floor", action="store_false", help="leave out the all-GPU floor, for a GPU "
                    "too small to hold every expert (the Qwen2-57B shape's 98.6 GB of them on an 80 GB H100): rows then "
                    "have no `bound_s` and no `tpot_over_bound`, and the process warms up on the first offloading "
                    "setting instead")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, not {args.repeats}")
    if args.profile and args.repeats > 1:
        ap.error("--profile runs each setting once; leave --repeats out")
    policies = args.policies or [p for p in policy_names() if p != "belady"]
    if not args.floor and set(policies) <= {"all-gpu"}:
        ap.error("--no-floor leaves nothing to run: name an offloading policy in --policies")
    params = dict(s.split("=", 1) for s in args.set)
    try:
        specs = {p: parse_policy_spec(p) for p in policies}
        predicts = {p: make_policy(base, **{**params, **own}).predictor_passes > 0 for p, (base, own) in specs.items()}
    except SmoeError as e:
        ap.error(str(e))
    if args.gpu is None:
        args.gpu = gpu_model(torch.cuda.get_device_name()) if args.device == "cuda" else "h200"
    links = [g or None for g in args.link_gbps]  # None: the machine's own link
    default_kv = default_kv_cache(torch.device(args.device))
    args.kv_cache = args.kv_cache or [default_kv]
    if any(links) and args.device != "cuda":
        ap.error("--link-gbps emulates a PCIe link on a GPU; it needs --device cuda")
    if args.grouped != ["graphs"] and args.device != "cuda":
        ap.error("--grouped chooses how a GPU computes a decode layer's experts; on a CPU they run one by one "
                 "(leave --grouped out)")
    overrides = {"num_hidden_layers": args.layers} if args.layers else {}
    if args.tiny:
        overrides |= dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=16, vocab_size=512,
                          shared_expert_intermediate_size=32, num_attention_heads=4, num_key_value_heads=2)
    name = args.shape + (f"-{args.layers}l" if args.layers else "") + ("-tiny" if args.tiny else "")
    stem = name + "".join(f"_link{g:g}" for g in links if g)
    source = RandomSource.named(args.shape, device=args.device, **overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    store = filled_host_store(source, args.device)
    expert_bytes = store.expert_bytes
    every_expert = len(store.data) * store.num_experts
    env = {"shape": args.shape, "model": name, "host_store_fill_s": time.perf_counter() - t0,
           "expert_bytes": expert_bytes, "argv": sys.argv,
           "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
           "copy_Bps": h2d_rate(expert_bytes) if args.device == "cuda" else None,
           "traces": trace_provenance({f"{w}/b{b}.pt": Path(args.traces) / w / f"b{b}.pt"
                                       for w in args.workloads for b in args.batches})}  # whose routing replays
    (out / f"{stem}_env.json").write_text(json.dumps(env, indent=1))
    print(json.dumps(env), flush=True)

    if args.device == "cuda":  # a process's first run is cold (kernels, allocator): warm up, measure nothing
        if args.floor:
            warm_policy, warm_size = "all-gpu", {"cache_experts": every_expert}
        else:  # the first offloading policy at the first size
            warm_policy = next(specs[p][0] for p in policies if p != "all-gpu")
            warm_size = {"budget_gb": args.budgets_gb[0]} if args.budgets_gb else {"cache_experts": args.slots[0]}
        run_replayed(source, warm_policy, Path(args.traces) / args.workloads[0] / f"b{args.batches[0]}.pt",
                     args.batches[0], device=args.device, host_store=store, max_segments=1, **warm_size)
    rows: list[dict] = []
    floor: dict[tuple, float] = {}
    for batch in args.batches:
        for workload in args.workloads:
            trace = Path(args.traces) / workload / f"b{batch}.pt"
            sizes = [{"budget_gb": b} for b in args.budgets_gb] if args.budgets_gb else \
                [{"cache_experts": n} for n in args.slots]
            modes = [(sk, gr, bo, kv, route) for sk in args.skeleton for gr in args.grouped for bo in args.block_order
                     for kv in args.kv_cache for route in args.routing]
            floors = [("all-gpu", None, None, "graphs", args.cpu_threads[0], "recorded", *m) for m in modes
                      if args.floor]
            offload = [(p, b, g, mode, threads, pred, *m) for g in links for b in sizes for p in policies
                       if p != "all-gpu" for mode in (args.predictor if predicts[p] else args.predictor[:1])
                       for pred in (args.predictions if predicts[p] else args.predictions[:1])
                       for threads in args.cpu_threads for m in modes]
            rounds = [(r, s) for r in range(args.repeats) for s in floors + (offload[::-1] if r % 2 else offload)]
            for repeat, (policy, budget, link, mode, threads, pred, skeleton, grouped, order, kv, routing) in rounds:
                try:
                    size = {"cache_experts": every_expert} if budget is None else budget
                    oracle = pred == "oracle" and predicts.get(policy, False)  # the floor is not in `predicts`
                    base, own = specs.get(policy, (policy, {}))
                    run = partial(run_replayed, source, base, trace, batch, device=args.device,
                                  params={**params, **own}, host_store=store, link_gbps=link,
                                  max_segments=args.segments, predictor_graphs=None if mode == "graphs" else False,
                                  # None: the runtime's default (graphs on a GPU, none on a CPU)
                                  skeleton_graphs=None if skeleton != "eager" else False,
                                  block_graphs=None if skeleton == "layer" else False,
                                  cpu_threads=threads,
                                  grouped_experts=None if args.device == "cpu" else grouped,
                                  router_first=order == "router-first", kv_cache=kv,
                                  oracle_predictions=oracle, known_routing=routing == "known", **size)
                    label = policy
                    if mode == "eager" and predicts[policy]:
                        label += "@eager-predictor"
                    if skeleton != "layer":
                        label += f"@{skeleton}-skeleton"
                    if grouped != "graphs":
                        label += f"@{grouped}-experts"
                    if order == "hf":
                        label += "@hf-block-order"
                    if kv != default_kv:
                        label += f"@{kv}-kv"
                    if oracle:
                        label += "@oracle-predictions"
                    if routing == "known":
                        label += "@known-routing"
                    if len(args.cpu_threads) > 1 and policy != "all-gpu":
                        label += f"@cpu{threads or 'default'}"
                    policy = label
                    if args.profile:
                        label = f"{policy}_{workload}_b{batch}"
                        for c in ":=,@":  # file names the device tool brings back
                            label = label.replace(c, "-")
                        profiled(run, out / f"{stem}_profile_{label}.txt", args.device)
                        continue
                    rec = run()
                except (SmoeError, torch.cuda.OutOfMemoryError) as e:  # a budget too small for a batch: a row says so
                    print(f"{policy} {budget} {link} b{batch} {workload}: {type(e).__name__}: {e}", flush=True)
                    continue
                m, acc = rec["metrics"], rec["prefetch_accuracy"]
                if policy.split("@")[0] == "all-gpu":
                    floor[(batch, workload, skeleton, grouped, order, kv, routing, repeat)] = m["tpot_s"]
                steps = max(m["decode_steps"], 1)
                link_Bps = rec["env"]["link_gbps"] * 1e9 if rec["env"]["link_gbps"] else env["copy_Bps"]
                bound = None  # without a floor, no bound
                if args.floor:
                    bound = max(floor.get((batch, workload, skeleton, grouped, order, kv, routing, repeat), 0.0),
                                m["decode"]["bytes_h2d"] / steps / link_Bps if link_Bps else 0.0)
                row = {"model": name, "gpu": args.gpu, "measured": args.device == "cuda",
                       "budget_gb": (budget or {}).get("budget_gb"), "policy": policy, "batch": batch,
                       "workload": workload,
                       **{k: m[k] for k in ("ttft_s", "tpot_s", "tpot_p50_s", "tpot_p90_s", "queue_s", "hit_rate", "bytes_h2d",
                                            "cpu_experts", "cpu_time_s", "substitutions", "prefetches",
                                            "policy_time_s", "check_time_s", "prefetch_time_s", "predict_time_s",
                                            "copy_wait_s", "victim_wait_s", "copy_gbps")},
                       "prefetch_top_share": acc["top_score_share"], "prefetch_routed_share": acc["routed_share"],
                       "slots": rec["memory"]["capacity"], "link_gbps": rec["env"]["link_gbps"], "bound_s": bound,
                       "tpot_over_bound": m["tpot_s"] / bound if bound else None, "repeat": repeat}
                rows.append(row)
                with open(out / f"{stem}.jsonl", "a") as f:
                    f.write(json.dumps({"row": row, **rec}) + "\n")
                write_csv(out / f"{stem}.csv", rows, COLUMNS)
                rnd = f" r{repeat}" if args.repeats > 1 else ""
                print(f"{policy:>15} {rec['memory']['capacity']} slots {link or 'native'} b{batch} {workload:>13}{rnd}: TPOT {m['tpot_s'] * 1e3:8.2f} ms "
                      f"(host {m['queue_s'] * 1e3:.2f}), hit "
                      f"{m['hit_rate'] if m['hit_rate'] is not None else float('nan'):.3f}, "
                      + (f"x{row['tpot_over_bound'] or 0:.2f} of bound" if args.floor else "no floor, no bound")
                      + (f", copies at {m['copy_gbps']:.1f} GB/s, compute waiting for them "
                         f"{m['decode']['copy_wait_s'] / steps * 1e3:.2f} ms a step" if m["copy_gbps"] else ""),
                      flush=True)
    return 0


def profiled(run, path: Path, device: str) -> None:
    """One run under torch.profiler into `path`: host (and device) time per op, then the host time of the ops
    inside each engine span (`smoe.*`, the innermost one), so a span's cost can be read op by op."""
    from collections import defaultdict

    from torch.profiler import ProfilerActivity, profile

    import smoe.metrics

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    smoe.metrics.SPANS = True
    try:
        with profile(activities=activities) as prof:
            rec = run()
    finally:
        smoe.metrics.SPANS = False
    m = rec["metrics"]
    ops = prof.key_averages()
    head = (f"{path.stem}: TPOT {m['tpot_s'] * 1e3:.2f} ms under the profiler (not a measurement), "
            f"{m['decode_steps']} decode steps, hit rate {m['hit_rate']}, policy {m['policy_time_s']:.3f} s, "
            f"predict {m['predict_time_s']:.3f} s\n")
    tables = [ops.table(sort_by="cpu_time_total", row_limit=60)]
    if device == "cuda":
        tables.append(ops.table(sort_by="device_time_total", row_limit=30))
    inside: dict = defaultdict(lambda: [0, 0.0])  # (span, op) -> [calls, self host us]
    for ev in prof.events():
        if ev.name.startswith("smoe.") or ev.device_type != torch.autograd.DeviceType.CPU:
            continue
        up = ev.cpu_parent
        while up is not None and not up.name.startswith("smoe."):
            up = up.cpu_parent
        cell = inside[(up.name if up is not None else "(no span)", ev.name)]
        cell[0] += 1
        cell[1] += ev.self_cpu_time_total
    lines = ["host time of ops by innermost engine span (self CPU us, calls; top 12 per span)"]
    for span in sorted({k[0] for k in inside}):
        cells = sorted(((v[1], v[0], op) for (s, op), v in inside.items() if s == span), reverse=True)
        lines.append(f"{span}: {sum(c[0] for c in cells):.0f} us in all")
        lines += [f"    {us:12.0f} us {calls:8d}  {op}" for us, calls, op in cells[:12]]
    tables.append("\n".join(lines))
    tables.append(device_idle(prof.events()))
    path.write_text(head + "\n\n".join(tables) + "\n")
    print(head, flush=True)


def device_idle(events) -> str:
    """Decode steps' device time: busy (any kernel or copy but the emulated link's spinner and host->device loads),
    and idle stretches charged to the host's innermost engine span (`smoe.timeline`), or to the top-level op the
    host was in outside spans; then the host's whole decode steps charged the same way. On a CPU run nothing is
    device time: both charges are then the host's whole step."""
    from smoe import timeline

    cpu = torch.autograd.DeviceType.CPU
    steps = [ev for ev in events if ev.name == "smoe.decode_step" and ev.device_type == cpu]
    if not steps:
        return "device idle: no decode steps in the trace"
    main = steps[0].thread
    # the device's own events: not the spans' mirrors on its timeline (named as the spans)
    busy = timeline.merge([(ev.time_range.start, ev.time_range.end) for ev in events if ev.device_type != cpu
                           and not ev.name.startswith("smoe.") and "spin" not in ev.name and "HtoD" not in ev.name])
    spans = [(ev.time_range.start, ev.time_range.end, ev.name if ev.name.startswith("smoe.") else f"op {ev.name}")
             for ev in events if ev.device_type == cpu and ev.thread == main and ev.name != "smoe.decode_step"
             and (ev.name.startswith("smoe.") or ev.cpu_parent is None or ev.cpu_parent.name == "smoe.decode_step")]
    windows = [(ev.time_range.start, ev.time_range.end) for ev in steps]
    wall = sum(b - a for a, b in windows)
    idle = [g for w in windows for g in timeline.gaps(busy, w)]
    charged = timeline.charge(idle, spans)
    n = len(steps)
    lines = ["(a CPU run: no device events, so every instant is idle and the charge is the host's time)"] if not busy else []
    lines += [f"device idle in decode steps (under the profiler): {n} steps, {wall / n / 1e3:.2f} ms per step, "
             f"device busy {(wall - sum(b - a for a, b in idle)) / n / 1e3:.2f} ms, idle "
             f"{sum(b - a for a, b in idle) / n / 1e3:.2f} ms per step, charged to the host's innermost span:"]
    lines += [f"    {us / n / 1e3:9.3f} ms/step  {name}" for name, us in sorted(charged.items(), key=lambda kv: -kv[1])[:25]]
    # the host's whole step, idle device or not: where a host-bound step goes
    hosted = timeline.charge(windows, spans)
    lines.append(f"host time in decode steps (under the profiler), {wall / n / 1e3:.2f} ms per step, charged to its "
                 "innermost span:")
    lines += [f"    {us / n / 1e3:9.3f} ms/step  {name}"
              for name, us in sorted(hosted.items(), key=lambda kv: -kv[1])[:25]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
