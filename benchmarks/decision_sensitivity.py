"""How close a tiny model's runs sit to a tie: the device-equality runs again on the CPU, each with every decoder
layer's output multiplied by (1 + eps * N(0,1)) noise (fresh per seed), counting the runs that decode or decide
differently from the unperturbed one. A policy whose run flips at eps near float32's rounding (about 1e-7 per
operation, growing over layers) may also differ between a GPU and the CPU (`device_equality.py`) without any
error in the runtime: the two devices' kernels round differently.

    python benchmarks/decision_sensitivity.py --out results/cpu/decision_sensitivity.csv      # CPU, ~2 min
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from device_equality import KEYS, PROMPTS  # noqa: E402
from smoe.files import write_csv  # noqa: E402
from smoe.runtime import Runtime  # noqa: E402
from smoe.tiny import make_tiny  # noqa: E402


def run(model: str, policy: str, slots: int, eps: float, seed: int) -> tuple:
    """(tokens, decision counts) of one device-equality run on the CPU, its layers' outputs perturbed by eps."""
    torch.manual_seed(0)
    rt = Runtime(model, policy, device="cpu", cache_experts=slots, batch=len(PROMPTS))
    g = torch.Generator().manual_seed(seed)

    def noisy(t: torch.Tensor) -> torch.Tensor:
        return t * (1 + eps * torch.randn(t.shape, generator=g, dtype=t.dtype))

    if eps:
        for layer in rt.model.model.layers:
            layer.register_forward_hook(lambda m, i, o: noisy(o) if torch.is_tensor(o) else (noisy(o[0]), *o[1:]))
    try:
        res = rt.generate(PROMPTS, 16)
    finally:
        rt.close()
    return res.tokens, tuple(res.metrics[k] for k in KEYS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--families", default="qwen2_moe,deepseek_v3")
    ap.add_argument("--policies", default="smoe,smoe-ce-cr-pre,hybrimoe,moe-infinity,score-lower")
    ap.add_argument("--eps", type=float, nargs="+", default=[1e-6, 1e-5, 1e-4])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--slots", type=int, default=6)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rows = []
    cells = [(f, p) for f in args.families.split(",") for p in args.policies.split(",")]
    for fam, policy in tqdm(cells, unit="setting"):
        model = str(make_tiny(fam, tmp / fam))
        base = run(model, policy, args.slots, 0.0, 0)
        row = {"family": fam, "policy": policy, "slots": args.slots, "seeds": args.seeds}
        for eps in args.eps:
            row[f"differ_at_{eps:g}"] = sum(run(model, policy, args.slots, eps, s) != base for s in range(args.seeds))
        rows.append(row)
        tqdm.write(str(row))
    write_csv(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
