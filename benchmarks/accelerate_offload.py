"""Hugging Face accelerate offloading at a device-memory budget: what a user would pick today, timed on the
paper's model shapes with the same random weights the offloading runtime uses (`smoe.shapes.RandomSource`).

    python benchmarks/accelerate_offload.py --shape qwen2-57b-a14b-shape --budget-gb 44 --out results/gpu/accelerate_h200

The model is built whole in host memory (bfloat16; Qwen2-57B needs 114 GB, so the 256 GiB machine), placed by
`infer_auto_device_map` under `max_memory={0: budget, "cpu": ...}` (whole decoder layers, as `device_map="auto"`
places them) and dispatched with `dispatch_model`: layers that do not fit stay in host memory and accelerate
copies each of them to the GPU on every forward. Routing does not matter to this baseline (an offloaded layer
moves all of its experts), so the model's own random routers run. Greedy decoding with a KV cache, the same loop
the runtime uses (`smoe.generate.greedy_decode`); TPOT is the mean decode step. Writes {shape}_{budget}gib.json with the
device map summary, TTFT and every step's time, per batch size.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import accelerate
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights  # noqa: E402
from accelerate.utils import set_module_tensor_to_device  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from smoe.files import write_json  # noqa: E402
from smoe.generate import greedy_decode  # noqa: E402
from smoe.loader import expert_shape, moe_blocks  # noqa: E402
from smoe.shapes import SHAPES, RandomSource  # noqa: E402

TOY = dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=16, vocab_size=512,
           shared_expert_intermediate_size=32, num_attention_heads=4, num_key_value_heads=2)


def build_on_host(source: RandomSource):
    """The HF model with every weight of `source` in host memory (experts in the fused layout)."""
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(source.config, dtype=source.dtype)
    for key in source.skeleton_keys():
        set_module_tensor_to_device(model, key, "cpu", value=source.read(key).cpu())
    for layer, block in moe_blocks(model).items():
        E, shape = expert_shape(block)
        I, H = shape.intermediate, shape.hidden
        gate_up = torch.empty(E, 2 * I, H, dtype=source.dtype)  # [E,2I,H]
        down = torch.empty(E, H, I, dtype=source.dtype)  # [E,H,I]
        buf = torch.empty(shape.numel, dtype=source.dtype)
        for e in range(E):
            source.read_expert(layer, e, buf, shape)
            gate_up[e] = buf[: 2 * I * H].view(2 * I, H)
            down[e] = buf[2 * I * H:].view(H, I)
        prefix = f"model.layers.{layer}.mlp.experts"
        set_module_tensor_to_device(model, f"{prefix}.gate_up_proj", "cpu", value=gate_up)
        set_module_tensor_to_device(model, f"{prefix}.down_proj", "cpu", value=down)
    return model.eval()


def place(model, budget_gb: float, device: str) -> dict:
    """accelerate's device map for a GPU budget (whole decoder layers; the rest stays on the host)."""
    if device == "cpu":
        return {"": "cpu"}
    return infer_auto_device_map(model, max_memory={0: f"{budget_gb}GiB", "cpu": "1000GiB"},
                                 no_split_module_classes=model._no_split_modules, dtype=model.dtype)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", required=True, choices=list(SHAPES))
    ap.add_argument("--budget-gb", type=float, required=True, help="GPU memory accelerate may use (GiB)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=8, help="new tokens per run (an offloaded step takes seconds)")
    ap.add_argument("--tiny", action="store_true", help="toy widths (a CPU smoke test of this script)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    name = args.shape + ("-tiny" if args.tiny else "")
    draw = "cuda" if args.device == "cuda" else "cpu"  # draw the random weights on the GPU: much faster
    source = RandomSource.named(args.shape, device=draw, **(TOY if args.tiny else {}))
    t0 = time.perf_counter()
    model = build_on_host(source)
    built_s = time.perf_counter() - t0
    device_map = place(model, args.budget_gb, args.device)
    model = dispatch_model(model, device_map=device_map) if args.device == "cuda" else model
    on_gpu = sorted(k for k, v in device_map.items() if v not in ("cpu", "disk"))
    record = {"shape": args.shape, "model": name, "budget_gb": args.budget_gb, "device": args.device,
              "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "accelerate": accelerate.__version__},
              "build_s": built_s, "modules_on_gpu": len(on_gpu), "modules_on_host": len(device_map) - len(on_gpu),
              "gpu_bytes": torch.cuda.memory_allocated() if args.device == "cuda" else None, "runs": []}
    g = torch.Generator().manual_seed(0)
    dev = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for batch in args.batches:
        ids = torch.randint(0, source.config.vocab_size, (batch, args.prompt_tokens), generator=g)
        decoded = greedy_decode(model, ids.to(dev), torch.ones_like(ids).to(dev), args.tokens)
        ttft, steps = decoded.ttft_s, decoded.step_s
        run = {"batch": batch, "ttft_s": ttft, "tpot_s": sum(steps) / len(steps), "step_s": steps}
        record["runs"].append(run)
        print(f"{name} accelerate {args.budget_gb} GiB b{batch}: TTFT {ttft:.2f} s, TPOT {run['tpot_s']:.3f} s",
              flush=True)
        # after every batch size, so that a run cut short keeps what it measured
        write_json(out / f"{name}_{args.budget_gb:g}gib.json", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
