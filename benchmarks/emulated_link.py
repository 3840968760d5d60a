"""Checks the emulated PCIe link on the GPU: copies of one expert's bytes from the page-locked host store, at the
machine's own rate and through `smoe.hardware.EmulatedLink` at the paper's link rates, timed on the copy stream.

    python benchmarks/emulated_link.py --expert-mb 55 --out results/gpu/paper_shape_h200/emulated_link.json

Reports, per target rate, the achieved rate of each of a few runs of back-to-back copies (what a layer's loads
see; the first at the hold as calibrated, later ones with it tuned from the measured copy times) and of single
copies, next to the copy rate from memory pinned by `pin_memory=True` and by `cudaHostRegister` (what the
host store uses), so a difference between the two pinning paths would show.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoe.hardware import EmulatedLink, h2d_rate  # noqa: E402
from smoe.store import _locked_empty  # noqa: E402


def timed_copies(dst: torch.Tensor, src: torch.Tensor, n: int, link: EmulatedLink | None) -> float:
    """Seconds for n back-to-back copies of src into dst on a side stream (the pool's pattern); each copy's own
    time (with its hold) is fed back to the link afterwards, as the pool does."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # warm-up
        dst.copy_(src, non_blocking=True)
    stream.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    marks = []
    with torch.cuda.stream(stream):
        start.record(stream)
        for _ in range(n):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(stream)
            dst.copy_(src, non_blocking=True)
            if link is not None:
                link.after_copy()
            b.record(stream)
            marks.append((a, b))
        end.record(stream)
    end.synchronize()
    if link is not None:
        link.observe([a.elapsed_time(b) / 1e3 for a, b in marks])
    return start.elapsed_time(end) / 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--expert-mb", type=float, default=55.0, help="bytes of one copy, MB (Qwen2-57B's expert: 55)")
    ap.add_argument("--rates-gbps", type=float, nargs="+", default=[6.0, 12.0, 24.0])
    ap.add_argument("--copies", type=int, default=40)
    ap.add_argument("--runs", type=int, default=8, help="runs of back-to-back copies per rate, the hold tuned "
                                                         "between them from the copies' measured times")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    nbytes = int(args.expert_mb * 1e6)
    src, _ = _locked_empty(nbytes, torch.uint8)
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    native = timed_copies(dst, src, args.copies, None)
    out = {"device": torch.cuda.get_device_name(), "expert_bytes": nbytes, "copies": args.copies,
           "pin_memory_GBps": h2d_rate(nbytes) / 1e9,
           "host_register_GBps": nbytes * args.copies / native / 1e9, "emulated": []}
    for gbps in args.rates_gbps:
        link = EmulatedLink(gbps, nbytes)
        calibrated = link.hold_cycles
        runs = [nbytes * args.copies / timed_copies(dst, src, args.copies, link) / 1e9 for _ in range(args.runs)]
        one = min(timed_copies(dst, src, 1, link) for _ in range(5))
        out["emulated"].append({"target_GBps": gbps, "run_GBps": runs, "single_copy_GBps": nbytes / one / 1e9,
                                "hold_cycles_calibrated": calibrated, "hold_cycles_tuned": link.hold_cycles,
                                "tuning_rounds": link.tuner.rounds})
    print(json.dumps(out, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
