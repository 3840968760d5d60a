"""How fast the host computes one routed expert, against how fast it can read the expert's bytes.

A CPU expert at decode batch sizes (1-3 tokens) is a matrix-vector product over the expert's weights: it is
bound by the rate at which the host streams them, so its time is best read as a bandwidth. This benchmark times,
per paper shape (its expert's width and bf16 weights), token count and intra-op thread count:
  expert        the runtime's CPU expert, `smoe.store.expert_forward` (what CPU-assisted policies run), timed by
                `smoe.hardware.cpu_expert_rate` (what the `machine_profile` rule measures at one token)
  read          a pass that only reads the same bytes (`smoe.hardware.cpu_read_rate`): the host's streaming read
                rate, the ceiling an expert at these batch sizes can approach
Each timing rotates over enough distinct experts (`--pool-mb`, by default larger than a server's last-level cache)
that every call reads its weights from memory, as in a decode step; the median over `--reps` calls is kept.

    python benchmarks/cpu_experts.py --out results/cpu/cpu_experts.csv

Writes one row per (shape, op, tokens, threads): milliseconds per expert, GB/s, and the expert's share of the read
rate at the same thread count; the CPU's name and vector capability go to the log.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoe.files import write_csv  # noqa: E402
from smoe.hardware import cpu_expert_rate, cpu_read_rate  # noqa: E402
from smoe.shapes import SHAPES  # noqa: E402


def cpu_info() -> tuple[str, list[str]]:
    """The CPU's model name and its flags of note for bf16 experts (AMX, AVX512-BF16, ...), from /proc/cpuinfo."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "?", []
    field = {line.split(":", 1)[0].strip(): line.split(":", 1)[1] for line in reversed(lines) if ":" in line}
    flags = field.get("flags", "").split()
    return field.get("model name", "?").strip(), sorted(
        f for f in flags if f.startswith("amx") or f in ("avx512_bf16", "avx512f", "avx2"))


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
    name, flags = cpu_info()
    print(f"CPU: {name}, {cores} logical cores; flags {' '.join(flags) or 'none of note'}; "
          f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}", flush=True)
    rows = []
    pool = args.pool_mb << 20
    for name in args.shapes:
        hidden, inter = SHAPES[name]["hidden_size"], SHAPES[name]["moe_intermediate_size"]
        nbytes = 3 * hidden * inter * 2  # one bf16 expert
        for t in tqdm(threads, desc=name, unit="threads"):
            rate = cpu_read_rate(nbytes, t, args.reps, pool)
            rows.append(dict(shape=name, op="read", tokens=0, threads=t, ms=nbytes / rate * 1e3, gbps=rate / 1e9))
            for n in args.tokens:
                rate = cpu_expert_rate(hidden, inter, t, args.reps, tokens=n, pool_bytes=pool)
                rows.append(dict(shape=name, op="expert", tokens=n, threads=t, ms=nbytes / rate * 1e3,
                                 gbps=rate / 1e9))
    df = pd.DataFrame(rows)
    reads = df[df.op == "read"].set_index(["shape", "threads"]).gbps
    df["of_read"] = [g / reads[(s, t)] for s, t, g in zip(df["shape"], df["threads"], df["gbps"])]
    write_csv(args.out, df.to_dict("records"), list(df.columns))
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
