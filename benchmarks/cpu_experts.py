"""How fast the host computes one routed expert, against how fast it can read the expert's bytes.

A CPU expert at decode batch sizes (1-3 tokens) is a matrix-vector product over the expert's weights: it is
bound by the rate at which the host streams them, so its time is best read as a bandwidth. This benchmark times,
per paper shape (its expert's width and bf16 weights), token count and intra-op thread count:
  expert        the runtime's CPU expert, `smoe.store.expert_forward` (what CPU-assisted policies run)
  read          a pass that only reads the same bytes (`max` over them as int16): the host's streaming read rate,
                the ceiling an expert at these batch sizes can approach
Each timing rotates over enough distinct experts (`--pool-mb`, by default larger than a server's last-level cache)
that every call reads its weights from memory, as in a decode step; the median over `--reps` calls is kept.

    python benchmarks/cpu_experts.py --out results/cpu/cpu_experts.csv

Writes one row per (shape, op, tokens, threads): milliseconds per expert, GB/s, and the expert's share of the read
rate at the same thread count; the CPU's name and vector capability go to the log.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoe.checkpoint import ExpertShape  # noqa: E402
from smoe.files import write_csv  # noqa: E402
from smoe.shapes import SHAPES  # noqa: E402
from smoe.store import expert_forward  # noqa: E402


def expert_shape(name: str) -> ExpertShape:
    cfg = SHAPES[name]
    return ExpertShape(hidden=cfg["hidden_size"], intermediate=cfg["moe_intermediate_size"])


def median_seconds(fn, n_experts: int, reps: int) -> float:
    """fn(i) timed on experts i = 0, 1, ... in turn (each read from memory, not cache): the median of `reps` calls
    after one warm-up call."""
    fn(n_experts - 1)
    times = []
    for r in range(reps):
        t0 = time.perf_counter()
        fn(r % n_experts)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith("amx") or f in ("avx512_bf16", "avx512f", "avx2"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--tokens", nargs="+", type=int, default=[1, 3])
    ap.add_argument("--threads", nargs="+", type=int, default=None,
                    help="intra-op threads to try (default: 1, 2, 4, ... up to the logical cores, and half of them)")
    ap.add_argument("--pool-mb", type=int, default=1024, help="distinct expert bytes to rotate over (MB)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    cores = torch.multiprocessing.cpu_count()
    threads = args.threads or sorted({1, 2, 4, 8, 16, cores // 2, cores} & set(range(1, cores + 1)))
    if min(threads) < 1 or min(args.tokens) < 1 or args.reps < 1 or args.pool_mb < 1:
        ap.error(f"--threads {threads}, --tokens {args.tokens}, --reps {args.reps}, --pool-mb {args.pool_mb}: "
                 "each must be at least 1")
    print(f"CPU: {cpu_name()}, {cores} logical cores; flags {' '.join(cpu_flags()) or 'none of note'}; "
          f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}", flush=True)
    act = torch.nn.functional.silu
    rows = []
    for name in args.shapes:
        shape = expert_shape(name)
        nbytes = shape.numel * 2  # bf16
        n_experts = max(2, -(-args.pool_mb * 2**20 // nbytes))
        gen = torch.Generator().manual_seed(0)
        pool = (torch.randn(n_experts, shape.numel, generator=gen) * 0.02).to(torch.bfloat16)  # [n, 3*I*H]
        for t in tqdm(threads, desc=name, unit="threads"):
            torch.set_num_threads(t)
            read = median_seconds(lambda i: pool[i].view(torch.int16).max(), n_experts, args.reps)
            rows.append(dict(shape=name, op="read", tokens=0, threads=t, ms=read * 1e3, gbps=nbytes / read / 1e9))
            for n in args.tokens:
                x = torch.randn(n, shape.hidden, generator=gen).to(torch.bfloat16)  # [n,H]
                s = median_seconds(lambda i: expert_forward(x, pool[i], shape, act), n_experts, args.reps)
                rows.append(dict(shape=name, op="expert", tokens=n, threads=t, ms=s * 1e3, gbps=nbytes / s / 1e9))
        del pool
    df = pd.DataFrame(rows)
    reads = df[df.op == "read"].set_index(["shape", "threads"]).gbps
    df["of_read"] = [g / reads[(s, t)] for s, t, g in zip(df["shape"], df["threads"], df["gbps"])]
    write_csv(args.out, df.to_dict("records"), list(df.columns))
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
