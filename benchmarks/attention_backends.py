"""The host cost of one decode attention call under each of PyTorch's attention backends.

    python benchmarks/attention_backends.py --out results/gpu/attention_backends_h200.csv   # on a CUDA device

A decode step runs each layer's attention core eagerly (the KV cache grows every step, so it is not graphed),
through the model's own attention function (Hugging Face's SDPA). Which kernel PyTorch picks for it decides how
much host time the call takes: a decode step at batch 1 is bound by the host. For the shape's attention
(`--shape`, its heads, KV heads and head size, bf16), one query token per sequence, a range of KV lengths, with and
without a padding mask, each backend is called `--calls` times: the host time per call (no synchronisation
between calls), the wall time per call once the device has finished, and the largest difference from a float64
reference. A backend that cannot run a case is written with its error.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoe.predict_graphs import attention_core  # noqa: E402
from smoe.shapes import SHAPES, shape_config  # noqa: E402

BACKENDS = {"default": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def attention_module(shape: str, device: str):
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeAttention

    config = shape_config(shape, num_hidden_layers=1)
    config._attn_implementation = "sdpa"
    return Qwen2MoeAttention(config, layer_idx=0).to(device=device, dtype=torch.bfloat16).eval()


def case(attn, batch: int, kv_len: int, masked: bool, device: str, gen: torch.Generator):
    """q [B,heads,1,d], k/v [B,kv_heads,L,d] and a bool mask [B,1,1,L] (the first sequence padded on the left by a
    quarter of L) or None."""
    heads, kv_heads, d = attn.config.num_attention_heads, attn.config.num_key_value_heads, attn.head_dim
    q = torch.randn(batch, heads, 1, d, generator=gen).to(device, torch.bfloat16)
    k = torch.randn(batch, kv_heads, kv_len, d, generator=gen).to(device, torch.bfloat16)
    v = torch.randn(batch, kv_heads, kv_len, d, generator=gen).to(device, torch.bfloat16)
    mask = None
    if masked:
        mask = torch.ones(batch, 1, 1, kv_len, dtype=torch.bool)
        mask[0, ..., : kv_len // 4] = False
        mask = mask.to(device)
    return q, k, v, mask


def reference(attn, q, k, v, mask) -> torch.Tensor:
    """float64 attention on the CPU -> [B,1,heads,d]."""
    rep = attn.config.num_attention_heads // attn.config.num_key_value_heads
    q, k, v = (t.double().cpu() for t in (q, k, v))
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    w = (q @ k.transpose(-1, -2)) * attn.scaling  # [B,heads,1,L]
    if mask is not None:
        w = w.masked_fill(~mask.cpu(), float("-inf"))
    return (w.softmax(-1) @ v).transpose(1, 2)


def measure(attn, backend, q, k, v, mask, calls: int, sync) -> tuple[float, float, torch.Tensor]:
    """-> (host us per call, wall us per call, the last output)."""
    ctx = sdpa_kernel([backend]) if backend is not None else torch.autograd.profiler.record_function("default")
    with ctx, torch.no_grad():
        out = attention_core(attn, q, k, v, mask)  # warm-up: plans and caches
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            out = attention_core(attn, q, k, v, mask)
        t1 = time.perf_counter()
        sync()
        t2 = time.perf_counter()
    return (t1 - t0) / calls * 1e6, (t2 - t0) / calls * 1e6, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="qwen2-57b-a14b-shape", choices=list(SHAPES))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--kv-lens", type=int, nargs="+", default=[64, 128, 512])
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    attn = attention_module(args.shape, args.device)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for batch in args.batches:
        for kv_len in args.kv_lens:
            for masked in (False, True):
                q, k, v, mask = case(attn, batch, kv_len, masked, args.device, gen)
                ref = reference(attn, q, k, v, mask)
                for name in args.backends:
                    row = {"shape": args.shape, "device": args.device, "batch": batch, "kv_len": kv_len,
                           "mask": masked, "backend": name}
                    try:
                        host, wall, out = measure(attn, BACKENDS[name], q, k, v, mask, args.calls, sync)
                        row |= {"host_us": host, "wall_us": wall,
                                "max_abs_diff": float((out.double().cpu() - ref).abs().max()), "error": ""}
                    except RuntimeError as e:  # the backend does not take this case
                        row |= {"host_us": None, "wall_us": None, "max_abs_diff": None,
                                "error": str(e).splitlines()[0][:200]}
                    print(row, flush=True)
                    rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out.with_suffix(".tmp"), index=False)
    out.with_suffix(".tmp").replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
