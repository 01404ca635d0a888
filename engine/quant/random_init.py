"""Random quantized weights for shapes we cannot ship (`random:8b` with int4 or int8).

Codes and scales are drawn directly, one matrix at a time, so an 8B shape's peak memory is its
quantized size plus one matrix's packing buffer; the weights approximate N(0, 0.02) like the float
random models (int4: uniform codes, scale 0.02 * sqrt(12) / 16 per group; int8: scale 0.02 * 3 / 127).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.config import ModelConfig
from engine.model import FUSED_PROJECTIONS, LlamaForCausalLM
from engine.quant.apply import materialize, quant_module
from engine.quant.embedding_head import quantized_embedding_and_head
from engine.quant.layouts import INT4_GROUP_SIZE, Int4Weight, Int8Weight

INT4_SCALE = 0.02 * 12 ** 0.5 / 16
INT8_SCALE = 0.02 * 3 / 127


def random_int4(n: int, k: int, gen: torch.Generator) -> Int4Weight:
    packed = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=gen)
    scale = torch.full((n, k // INT4_GROUP_SIZE), INT4_SCALE)
    return Int4Weight(packed, scale, torch.full_like(scale, INT4_SCALE / 2), INT4_GROUP_SIZE)


def random_int8(n: int, k: int, gen: torch.Generator) -> Int8Weight:
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    return Int8Weight(q, torch.full((n,), INT8_SCALE))


def random_quantized_model(config: ModelConfig, mode: str, device: torch.device,
                           dtype: torch.dtype) -> LlamaForCausalLM:
    gen = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    embed = random_int8(config.vocab_size, config.hidden_size, gen)
    head = None if config.tie_word_embeddings else random_int8(config.vocab_size, config.hidden_size, gen)
    quantized_embedding_and_head(model, embed, head, device, dtype)
    draw = random_int4 if mode == "int4" else random_int8
    fused = (*(name.rpartition(".")[2] for name in FUSED_PROJECTIONS), "o_proj", "down_proj")
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for attr in fused:
                linear = getattr(parent, attr, None)
                if isinstance(linear, nn.Linear):
                    weight = draw(linear.out_features, linear.in_features, gen)
                    setattr(parent, attr, quant_module(weight, None, device))
    materialize(model, device, dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.fill_(1.0 if "norm" in name else 0.0)
    return model
