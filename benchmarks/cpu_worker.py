"""What a layer's CPU experts cost the worker thread beyond their own forwards, alone and beside a busy thread.

The engine hands a layer's CPU experts to one worker thread, which returns the gate-weighted sum of their outputs
(`smoe.store.weighted_expert_sum`); the device then gets one copy and one add for all of them. Per (shape, tokens,
intra-op threads) this times a layer's jobs of `--experts` experts, each on every token row, as:
  forwards     the experts' forwards alone, rows already gathered: what no summing can undercut
  summed       `weighted_expert_sum`: one gather, the forwards, one weighting and one add for all the jobs
  per-expert   the same sum with a gather, a weighting and an add per expert, as the worker did at af48357
each alone and again beside a thread that runs small torch operations in a Python loop (`-busy`), as the decoding
thread does while the worker runs: every torch call made from Python needs the interpreter lock, which that thread
holds between its own calls. On a machine with few cores that thread also takes a core from the intra-op
threads. Experts rotate over `--pool-mb` of distinct weights, as `benchmarks/cpu_experts.py` does, so each is read
from memory; the median over `--reps` layers is kept, in milliseconds per expert.

    python benchmarks/cpu_worker.py --out results/cpu/cpu_worker.csv

Writes one row per (shape, tokens, threads, op, busy), with the milliseconds over `forwards` at the same setting.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoe.checkpoint import ExpertShape  # noqa: E402
from smoe.files import write_csv  # noqa: E402
from smoe.shapes import SHAPES  # noqa: E402
from smoe.store import expert_forward, weighted_expert_sum  # noqa: E402

ACT = torch.nn.functional.silu


def per_expert_sum(x, jobs, weights, w, shape, act):
    """The sum as af48357's worker took it: a gather, a weighting and an add per expert (the comparison)."""
    acc = torch.zeros(x.shape, dtype=torch.float32)  # [T,H]
    for e, rows in jobs:
        idx = torch.tensor(rows)  # [n]
        y = expert_forward(x[idx], weights(e), shape, act)  # [n,H]
        acc.index_put_((idx,), y.float() * torch.from_numpy(w[rows, e])[:, None], accumulate=True)
    return acc.to(x.dtype)


class Busy:
    """A thread running small torch operations in a Python loop while the block runs (the decoding thread's part)."""

    def __init__(self, on: bool):
        self.on, self.stop = on, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        a = torch.zeros(8)
        while not self.stop.is_set():
            for _ in range(50):
                a.add_(1.0)

    def __enter__(self):
        if self.on:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.on:
            self.thread.join()


def time_layers(fn, reps: int) -> float:
    """fn(i) for i = 0..reps (the first a warm-up): the median seconds of the others."""
    fn(0)
    times = []
    for i in range(1, reps + 1):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--tokens", nargs="+", type=int, default=[1, 3])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--experts", type=int, default=8, help="CPU experts in a layer (CPU-assist ran about 10 a layer "
                    "at deepseek's shape, batch 3; HybriMoE about 4)")
    ap.add_argument("--pool-mb", type=int, default=1024, help="distinct expert bytes to rotate over (MB)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    for flag in ("tokens", "threads"):
        if min(getattr(args, flag)) < 1:
            ap.error(f"--{flag} {getattr(args, flag)}: each must be at least 1")
    for flag in ("experts", "pool_mb", "reps"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    print(f"torch {torch.__version__}, {torch.multiprocessing.cpu_count()} logical cores", flush=True)
    rows = []
    before = torch.get_num_threads()
    for name in args.shapes:
        shape = ExpertShape(hidden=SHAPES[name]["hidden_size"], intermediate=SHAPES[name]["moe_intermediate_size"])
        k = args.experts
        n = max(k + 1, -(-(args.pool_mb << 20) // (shape.numel * 2)))  # experts rotated over
        pool = torch.empty(n, shape.numel, dtype=torch.bfloat16).normal_(std=0.02)  # [n, 3*I*H]
        for t in tqdm(args.threads, desc=name, unit="threads"):
            torch.set_num_threads(t)
            for tokens in args.tokens:
                x = torch.randn(tokens, shape.hidden, dtype=torch.bfloat16)  # [T,H]
                w = np.random.default_rng(0).random((tokens, k), dtype=np.float32)  # [T,E]
                jobs = [(e, list(range(tokens))) for e in range(k)]
                ops = {
                    "forwards": lambda i: [expert_forward(x, pool[(i * k + e) % n], shape, ACT) for e in range(k)],
                    "summed": lambda i: weighted_expert_sum(x, jobs, lambda e: pool[(i * k + e) % n], w, shape, ACT),
                    "per-expert": lambda i: per_expert_sum(x, jobs, lambda e: pool[(i * k + e) % n], w, shape, ACT),
                }
                for busy in (False, True):
                    with Busy(busy):
                        for op, fn in ops.items():
                            ms = time_layers(fn, args.reps) / k * 1e3
                            rows.append(dict(shape=name, tokens=tokens, threads=t, op=op, busy=busy, ms=ms))
    torch.set_num_threads(before)
    df = pd.DataFrame(rows)
    base = df[df.op == "forwards"].set_index(["shape", "tokens", "threads", "busy"]).ms
    df["over_forwards_ms"] = [m - base[(s, n, t, b)] for s, n, t, b, m in
                              zip(df["shape"], df["tokens"], df["threads"], df["busy"], df["ms"])]
    write_csv(args.out, df.to_dict("records"), list(df.columns))
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
