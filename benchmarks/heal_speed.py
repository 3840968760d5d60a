"""Speed of one healing step (`smoe.smolmoe.heal.train`) on a SmolLM2-135M-shaped model, per variant.

Random weights of the real shape (30 layers, hidden 576, FFN 1,536, vocab 49,152), so no GGUF is needed: the
step's cost does not depend on the weights' values. Variants: batch size (sequences of 512 tokens) and
torch.compile. Each variant trains `--warmup` steps (compilation included), then `--steps` timed steps;
writes ms/step, tokens/s and peak memory to JSON, plus a profiler table of one eager step (GPU kernel time
against host time says whether the step is bound by the GPU or by launching work).

    python benchmarks/heal_speed.py --out results/smolmoe/heal_speed_h200.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from smoe.files import write_json
from smoe.smolmoe.heal import HealConfig, make_student, parse_topology, train

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                    max_position_embeddings=8192, rope_theta=100000.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="16:eager,32:eager,64:eager,32:compile,64:compile")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--topology", default="e64k32s384")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    torch.manual_seed(0)
    dense = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).eval()
    topo = parse_topology(args.topology)
    N, L, H = dense.config.intermediate_size, dense.config.num_hidden_layers, dense.config.hidden_size
    orders = [torch.randperm(N) for _ in range(L)]
    routers = [torch.randn(topo.num_experts, H) * 0.02 for _ in range(L)]
    data = torch.randint(0, dense.config.vocab_size, (256, 512))
    rows = []
    for variant in args.variants.split(","):
        batch, mode = variant.split(":")
        cfg = HealConfig(topology=topo, batch=int(batch), steps=args.warmup, compile=mode == "compile")
        student = make_student(dense, orders, routers, cfg)
        torch.cuda.reset_peak_memory_stats()
        try:
            t = time.perf_counter()
            train(student, dense, data, cfg, args.device, progress=False)
            warm_s = time.perf_counter() - t
            cfg.steps = args.steps
            torch.cuda.synchronize()
            t = time.perf_counter()
            train(student, dense, data, cfg, args.device, progress=False)
            torch.cuda.synchronize()
        except torch.OutOfMemoryError:
            row = {"batch": int(batch), "mode": mode, "error": "CUDA out of memory"}
        else:
            ms = (time.perf_counter() - t) / args.steps * 1e3
            row = {"batch": int(batch), "mode": mode, "ms_per_step": ms, "warmup_s": warm_s,
                   "tokens_per_s": int(batch) * 512 / ms * 1e3, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
        print(json.dumps(row), flush=True)
        rows.append(row)
        del student
        torch.cuda.empty_cache()
    cfg = HealConfig(topology=topo, batch=32, steps=1)
    student = make_student(dense, orders, routers, cfg)
    train(student, dense, data, cfg, args.device, progress=False)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        train(student, dense, data, cfg, args.device, progress=False)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    print(table)
    write_json(args.out, {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                          "topology": args.topology, "rows": rows, "profile_batch32": table.splitlines()})


if __name__ == "__main__":
    main()
