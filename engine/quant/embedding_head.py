"""The embedding and the output head in a quantized model: both int8 with per-row scales.

In int4 mode too: the head's 49152x576 matrix is a fifth of the bundled model, and 4-bit logits
cost quality that llama.cpp's Q4 files also avoid (they ship the head in Q8_0). When the model ties
the two, one int8 tensor serves both: the head multiplies by it, the embedding dequantizes only the
rows it looks up.
"""

from __future__ import annotations

import torch

from engine.model import LlamaForCausalLM
from engine.quant.layouts import Int8Weight
from engine.quant.linear import Int8Embedding, Int8Linear
from engine.quant.quantize import quantize_int8


def as_int8(weight) -> Int8Weight:
    return weight if isinstance(weight, Int8Weight) else quantize_int8(weight)


def quantized_embedding_and_head(model: LlamaForCausalLM, embed, head, device: torch.device,
                                 dtype: torch.dtype) -> None:
    embed = as_int8(embed)
    model.model.embed_tokens = Int8Embedding(embed, dtype, device)
    if model.config.tie_word_embeddings or head is None:
        tied = model.model.embed_tokens
        model.lm_head = Int8Linear(Int8Weight(tied.q, tied.scale), None, device)
    else:
        model.lm_head = Int8Linear(as_int8(head), None, device)
