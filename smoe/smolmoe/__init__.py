"""smolmoe-135m: a real pretrained fine-grained MoE made offline from SmolLM2-135M-Instruct.

`modeling` (the registered architecture), `dense` (the GGUF teacher), `moefy` (co-activation clustering into
experts, router initialisation), `heal` (distillation on the GPU), `assemble` (deterministic checkpoint build
from the pinned GGUF and the committed recipe).
"""
