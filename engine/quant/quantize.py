"""Float weights to our layouts (HF safetensors, float GGUF tensors, GGUF types without a direct path).

int4: asymmetric min/max per group of 32 columns (zero is the group's value at code 8).
int8: symmetric absmax per row.
"""

from __future__ import annotations

import torch

from engine.quant.layouts import INT4_GROUP_SIZE, Int4Weight, Int8Weight, pack_codes


def quantize_int4(w: torch.Tensor, group_size: int = INT4_GROUP_SIZE) -> Int4Weight:
    n, k = w.shape
    if k % group_size:
        raise ValueError(f"in_features {k} is not a multiple of the int4 group size {group_size}")
    g = w.float().reshape(n, k // group_size, group_size)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp_min(torch.finfo(torch.float32).tiny)
    codes = torch.round((g - lo[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.uint8)
    return Int4Weight(pack_codes(codes.reshape(n, k)), scale, lo + 8 * scale, group_size)


def quantize_int8(w: torch.Tensor) -> Int8Weight:
    w = w.float()
    scale = (w.abs().amax(-1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return Int8Weight(q, scale)


def quantize(w: torch.Tensor, mode: str) -> Int4Weight | Int8Weight:
    return quantize_int4(w) if mode == "int4" else quantize_int8(w)
