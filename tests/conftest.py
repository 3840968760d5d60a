"""Shared fixtures: tiny checkpoints of every family (built once per session) and their HF references.

The reference for a family is transformers' own model loaded from the same directory in float32, decoded
with `smoe.generate.greedy_decode` on the same left-padded batch; its tokens and per-step logits are what
every exact run of the offloading runtime must reproduce.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from smoe.tiny import make_tiny  # noqa: E402
from smoe_test_support import NEW_TOKENS, PROMPTS, Reference  # noqa: E402


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """tiny(family, **overrides) -> checkpoint dir, built once per (family, overrides) per session."""
    built: dict = {}

    def get(family: str, **overrides):
        key = (family, tuple(sorted(overrides.items())))
        if key not in built:
            name = family + "".join(f"-{k}{v}" for k, v in key[1])
            built[key] = make_tiny(family, tmp_path_factory.mktemp(name), seed=0, **overrides)
        return built[key]

    return get


@pytest.fixture(scope="session")
def hf_model(tiny):
    """hf_model(family) -> transformers' own model of the tiny checkpoint (float32, eval), loaded once."""
    from transformers import AutoModelForCausalLM

    models: dict = {}

    def get(family: str):
        if family not in models:
            models[family] = AutoModelForCausalLM.from_pretrained(tiny(family), dtype=torch.float32).eval()
        return models[family]

    return get


@pytest.fixture(scope="session")
def reference(tiny, hf_model):
    """reference(family) -> Reference of PROMPTS x NEW_TOKENS, decoded by the HF model once per family."""
    from transformers import AutoTokenizer

    from smoe.generate import greedy_decode

    refs: dict = {}

    def get(family: str) -> Reference:
        if family not in refs:
            tok = AutoTokenizer.from_pretrained(tiny(family), padding_side="left")
            enc = tok(PROMPTS, return_tensors="pt", padding=True)
            logits: list[torch.Tensor] = []
            tokens = greedy_decode(
                hf_model(family), enc["input_ids"], enc["attention_mask"], NEW_TOKENS,
                on_logits=lambda step, lg: logits.append(lg.detach().float().clone()),
            ).tokens
            refs[family] = Reference(enc["input_ids"], enc["attention_mask"], tokens.tolist(), logits)
        return refs[family]

    return get
