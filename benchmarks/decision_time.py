"""Where a decode layer's decision time goes: each piece of the host's per-layer decision work, timed in the run
and, for the pure pieces, timed again at once on the same inputs.

The policies replay a decode trace on the CPU at the paper shape's layers, experts and top-k with toy widths (as
`paper_shape.py --tiny`; the decisions do not depend on the widths), at the GPU run's slot count. Per decode
layer it times:
  plan          the policy's `plan(view)`
  check         the runtime's `check_plan` of that plan
  prefetch      the policy's prefetch decision (`prefetch(view, ctx)` less the predictions it waited for)
  observe       the policy's `observe(view, plan)`
  gate_weights  the engine's gate weights of the checked plan (runtime, not counted in `policy_time_s`)
`check` and `gate_weights` are pure: each is called a second time right after the first, on the same inputs, and
timed as `check (again)` and `gate_weights (again)`. The gap between a piece and its immediate repeat is what the
run around it costs the same Python (caches and branch predictors cooled by the model's work in between), not
the piece's own logic.

With `--probe`, each policy also replays once more with nothing timed but three fixed operations at the start of
every decode layer, where the policy's plan would start, each done twice in a row: a numpy call (`np.zeros(4)`), a
sort of 64 Python floats (a score row) and a [1,64] tensor's `tolist()`. Each first call against its repeat is the
cooled run's price for one operation the policy's code would make, apart from any logic.

    python benchmarks/decision_time.py --traces traces --out results/cpu/decision_time.csv

Writes one row per (policy, piece): calls, microseconds per call and per decode layer (median over --repeats
runs, which alternate the policies' order), and the engine's own `policy_time_s` per decode layer (plan, check,
prefetch decision and observe; the repeated check taken out) as a cross-check.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

import smoe.engine as engine_mod
from smoe.policy import ExpertPolicy, make_policy, parse_policy_spec
from smoe.predict import PrefetchContext
from smoe.replay import run_replayed
from smoe.shapes import RandomSource

TOY = dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=16, vocab_size=512,
           shared_expert_intermediate_size=32, num_attention_heads=4, num_key_value_heads=2)  # paper_shape --tiny
POLICIES = ["all-gpu", "lru", "hybrimoe", "smoe-ce-cr", "smoe", "smoe-early"]
PIECES = ["plan", "check", "check (again)", "prefetch", "observe", "gate_weights", "gate_weights (again)"]
PROBES = ["probe: np.zeros(4)", "probe: sort 64 floats", "probe: tensor [1,64] tolist"]
AGAIN = " (again)"


class Clock:
    """Seconds and calls per piece, counted only while a decode layer runs."""

    def __init__(self):
        self.decode = False
        self.layers = 0
        every = PIECES + [p + a for p in PROBES for a in ("", AGAIN)]
        self.seconds = {p: 0.0 for p in every}
        self.calls = {p: 0 for p in every}

    def add(self, piece: str, seconds: float) -> None:
        if self.decode:
            self.seconds[piece] += seconds
            self.calls[piece] += 1


def _timed(clock: Clock, piece: str, fn, again: str | None = None):
    """fn wrapped to charge its wall time to `piece`; with `again`, called once more on the same arguments (a pure
    function) and that second call charged to `again`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        t1 = time.perf_counter()
        clock.add(piece, t1 - t0)
        if again is not None and clock.decode:
            fn(*args, **kwargs)
            clock.add(again, time.perf_counter() - t1)
        return out

    return wrapper


@contextmanager
def _patched(obj, name: str, value):
    """obj.name replaced by value for the block; an inherited attribute is removed again, not copied down."""
    own = name in vars(obj)
    old = vars(obj).get(name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if own:
            setattr(obj, name, old)
        else:
            delattr(obj, name)


@contextmanager
def counted_layers(clock: Clock, first=None):
    """The engine with `clock` counting decode layers and timing only while one runs, for the length of the block;
    `first()`, if given, runs at the start of every layer, before the engine's own work."""
    run_layer = engine_mod.Engine._run_layer

    def layer(self, *args, **kwargs):
        clock.decode = self.phase == "decode"
        clock.layers += clock.decode
        if first is not None:
            first()
        try:
            return run_layer(self, *args, **kwargs)
        finally:
            clock.decode = False

    with _patched(engine_mod.Engine, "_run_layer", layer):
        yield


@contextmanager
def instrumented(clock: Clock, policy_cls):
    """The engine and `policy_cls` with every piece timed into `clock`, for the length of the block."""
    Engine = engine_mod.Engine
    predicted = PrefetchContext._predicted

    waited = [0.0]  # time inside the predictions a prefetch decision read (the runtime's, not the decision's)

    def predictions(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return predicted(self, *args, **kwargs)
        finally:
            waited[0] += time.perf_counter() - t0

    def prefetch(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            waited[0] = 0.0
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            clock.add("prefetch", time.perf_counter() - t0 - waited[0])
            return out

        return wrapper

    with ExitStack() as stack:
        enter = stack.enter_context
        enter(counted_layers(clock))
        enter(_patched(engine_mod, "check_plan", _timed(clock, "check", engine_mod.check_plan, "check (again)")))
        enter(_patched(Engine, "_gate_weights",
                       _timed(clock, "gate_weights", Engine._gate_weights, "gate_weights (again)")))
        enter(_patched(PrefetchContext, "_predicted", predictions))
        enter(_patched(policy_cls, "plan", _timed(clock, "plan", policy_cls.plan)))
        enter(_patched(policy_cls, "observe", _timed(clock, "observe", policy_cls.observe)))
        if policy_cls.prefetch is not ExpertPolicy.prefetch:  # the engine prefetches only for a policy that overrides it
            enter(_patched(policy_cls, "prefetch", prefetch(policy_cls.prefetch)))
        yield


@contextmanager
def probed(clock: Clock):
    """The engine with `PROBES` timed, each twice in a row, at the start of every decode layer, for the length of the
    block; nothing else is timed."""
    row = torch.rand(1, 64)  # [1,64] a score row
    floats = row[0].tolist()
    work = {PROBES[0]: functools.partial(np.zeros, 4), PROBES[1]: functools.partial(sorted, floats),
            PROBES[2]: row.tolist}

    def probes():
        for name, fn in work.items():
            for label in (name, name + AGAIN):
                t0 = time.perf_counter()
                fn()
                clock.add(label, time.perf_counter() - t0)

    with counted_layers(clock, probes):
        yield


def one_run(source, policy: str, trace: Path, batch: int, slots: int) -> tuple[Clock, float, dict]:
    """One replayed run of `policy` -> (its clock, `policy_time_s` per decode layer as the engine counted it, the
    run's metrics)."""
    clock = Clock()
    base, params = parse_policy_spec(policy)  # "smoe:prefetch_gate=2": a registered policy with parameters set
    with instrumented(clock, type(make_policy(base, **params))):
        rec = run_replayed(source, base, trace, batch, params=params, cache_experts=slots)
    assert clock.layers, "no decode layer ran"
    # the engine's count holds the repeated check too (it runs inside the engine's timed span): taken out again
    m = rec["metrics"]
    return clock, (m["decode"]["policy_time_s"] - clock.seconds["check (again)"]) / clock.layers, m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", required=True, help="folder of {workload}/b{batch}.pt decode traces")
    ap.add_argument("--shape", default="qwen2-57b-a14b-shape")
    ap.add_argument("--workload", default="exam")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--slots", type=int, default=633, help="expert slots (633: the H200 runs' Qwen2-57B shape at "
                    "48 GB); all-gpu gets every expert")
    ap.add_argument("--policies", nargs="+", default=POLICIES, help="registered names, or specs with parameters set "
                    "(smoe:prefetch_gate=2)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per policy, in alternating order; rows give medians")
    ap.add_argument("--probe", action="store_true", help="also one run per policy timing `PROBES` only (see above)")
    ap.add_argument("--out", required=True, help="CSV to write")
    args = ap.parse_args()
    trace = Path(args.traces) / args.workload / f"b{args.batch}.pt"
    if not trace.is_file():
        ap.error(f"--traces {args.traces}: no {trace} (make one with `python -m smoe slim-traces`)")
    for p in args.policies:
        base, params = parse_policy_spec(p)
        make_policy(base, **params)  # an unknown name or parameter fails here, naming the accepted ones
    source = RandomSource.named(args.shape, **TOY)
    every = source.config.num_hidden_layers * source.config.num_experts

    runs: dict[str, list[tuple[Clock, float]]] = {p: [] for p in args.policies}
    order = list(args.policies)
    probes: dict[str, Clock] = {}
    with tqdm(total=len(order) * (args.repeats + args.probe), desc="decision time", unit="run") as bar:
        for r in range(args.repeats):
            for p in order if r % 2 == 0 else order[::-1]:
                bar.set_postfix_str(p)
                runs[p].append(one_run(source, p, trace, args.batch, every if p == "all-gpu" else args.slots)[:2])
                bar.update()
        for p in order if args.probe else []:
            bar.set_postfix_str(f"{p}, probes")
            probes[p] = Clock()
            base, params = parse_policy_spec(p)
            with probed(probes[p]):
                run_replayed(source, base, trace, args.batch, params=params,
                             cache_experts=every if p == "all-gpu" else args.slots)
            bar.update()

    rows = []
    for p, done in runs.items():
        pieces = [(piece, done) for piece in PIECES]
        if p in probes:  # one run, timing the probes only
            pieces += [(piece, [(probes[p], None)]) for piece in probes[p].seconds if piece.startswith("probe")]
        for piece, clocks in pieces:
            calls = clocks[0][0].calls[piece]
            if not calls:
                continue
            rows.append({
                "policy": p, "piece": piece, "workload": args.workload, "batch": args.batch,
                "slots": every if p == "all-gpu" else args.slots, "decode_layers": clocks[0][0].layers,
                "calls": calls,
                "us_per_call": statistics.median(c.seconds[piece] / c.calls[piece] for c, _ in clocks) * 1e6,
                "us_per_layer": statistics.median(c.seconds[piece] / c.layers for c, _ in clocks) * 1e6,
                "policy_us_per_layer": statistics.median(t for _, t in done) * 1e6,
                "runs": len(clocks),
            })
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    tmp = out.with_name(f".{out.name}.tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(out)
    shown = [p for p in PIECES if p in set(table.piece)] + [p for p in dict.fromkeys(table.piece) if p not in PIECES]
    print(table.pivot(index="piece", columns="policy", values="us_per_layer").round(1).reindex(shown).to_string())
    print("policy_time_s per decode layer (us):",
          {p: round(t, 1) for p, t in table.groupby("policy").policy_us_per_layer.first().items()})


if __name__ == "__main__":
    main()
