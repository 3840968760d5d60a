"""Batched greedy decoding with a KV cache, prefill and decode timed separately.

Where it sits: the outer loop of a run. Prompts of different lengths are left-padded; positions come
from the attention mask (as `generate` computes them), so a padded sequence decodes exactly as it would
alone. Decoding runs for a fixed number of new tokens (EOS does not stop it), so every policy of a
comparison decodes the same number of steps.
"""
from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
from transformers import DynamicCache

from .metrics import span


def _cache_kwarg(model) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"


class Decoded(NamedTuple):
    tokens: torch.Tensor  # [B,N] new tokens, on the CPU
    ttft_s: float
    step_s: list[float]  # each decode step's wall time
    # each decode step's host time up to its wait for the step's token: the time the host took to queue the step's
    # work, plus any waits for the device inside it (a routing read back). Near `step_s`: the host set the step;
    # well under it: the device (compute or copies) did, after the host had queued everything.
    queue_s: list[float]


@torch.no_grad()
def greedy_decode(
    model,
    input_ids: torch.Tensor,  # [B,S] left-padded
    attention_mask: torch.Tensor,  # [B,S] 1 for real tokens
    max_new_tokens: int,
    on_forward: Callable[[str, int], None] = lambda phase, step: None,
    on_logits: Callable[[int, torch.Tensor], None] | None = None,
    stop: Callable[[torch.Tensor], bool] | None = None,
    cache=None,
) -> Decoded:
    """The new tokens, TTFT and each decode step's wall and host-queueing seconds (`Decoded`). `stop(tokens [B,n])`, if
    given, ends decoding early once it returns True (accuracy runs: every sequence has hit a stop string);
    latency runs leave it out, so every policy decodes the same number of steps. `cache`: an empty KV cache to fill
    (a transformers `StaticCache` of at least S + max_new_tokens positions), else a `DynamicCache`."""
    cache = DynamicCache(config=model.config) if cache is None else cache
    kw = {_cache_kwarg(model): cache, "use_cache": True}
    mask = attention_mask
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [B,S]
    out_tokens: list[torch.Tensor] = []
    steps: list[float] = []
    queued: list[float] = []

    t0 = time.perf_counter()
    on_forward("prefill", 0)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=pos, logits_to_keep=1, **kw).logits
    nxt = logits[:, -1].argmax(-1)  # [B]
    out_tokens.append(nxt.cpu())  # waits for the compute stream only
    ttft = time.perf_counter() - t0
    if on_logits is not None:
        on_logits(0, logits[:, -1])

    last_pos = pos[:, -1:]
    for step in range(1, max_new_tokens):
        if stop is not None and stop(torch.stack(out_tokens, dim=1)):
            break
        t0 = time.perf_counter()
        with span("smoe.decode_step"):
            on_forward("decode", step)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
            last_pos = last_pos + 1
            logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last_pos, **kw).logits
            nxt = logits[:, -1].argmax(-1)
            t1 = time.perf_counter()
            out_tokens.append(nxt.cpu())
        steps.append(time.perf_counter() - t0)
        queued.append(t1 - t0)
        if on_logits is not None:
            on_logits(step, logits[:, -1])
    return Decoded(torch.stack(out_tokens, dim=1), ttft, steps, queued)
