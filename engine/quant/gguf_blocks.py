"""GGUF quantized blocks decoded straight into our layouts, without a float copy of the tensor.

Q4_0 block (18 bytes per 32 weights): fp16 d, 16 bytes of codes; w = d * (q - 8).
Q4_1 block (20 bytes): fp16 d, fp16 m, 16 bytes of codes; w = d * q + m.
In both, byte j holds code j in its low nibble and code j + 16 in its high nibble.
Anything else (Q8_0 to per-row int8, K-quants, float tensors) goes through the `gguf` package's
dequantization of that one tensor and quantize.py: per-row int8 cannot carry Q8_0's per-block scales.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.quant.layouts import Int4Weight, QuantWeight, pack_codes
from engine.quant.quantize import quantize

Q4_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20}
AUTO_MODES = {"Q4_0": "int4", "Q4_1": "int4", "Q4_K": "int4", "Q5_0": "int4", "Q5_1": "int4",
              "Q5_K": "int4", "Q8_0": "int8", "Q6_K": "int8"}


def auto_mode(type_names: list[str]) -> str:
    """What a checkpoint whose projection tensors have these GGML types carries: int4, int8 or none."""
    modes = {AUTO_MODES.get(name, "none") for name in type_names}
    for mode in ("int4", "int8"):
        if mode in modes:
            return mode
    return "none"


def decode_q4(raw: np.ndarray, type_name: str, shape: tuple[int, int]) -> Int4Weight:
    """raw: the tensor's bytes, uint8 [rows, bytes per row]."""
    n, k = shape
    blocks = torch.from_numpy(np.array(raw, dtype=np.uint8).reshape(n, k // 32, Q4_BLOCK_BYTES[type_name]))
    d = blocks[..., 0:2].contiguous().view(torch.float16).squeeze(-1).float()
    if type_name == "Q4_1":
        m = blocks[..., 2:4].contiguous().view(torch.float16).squeeze(-1).float()
        zero, qs = m + 8 * d, blocks[..., 4:]
    else:
        zero, qs = torch.zeros_like(d), blocks[..., 2:]
    codes = torch.cat([qs & 15, qs >> 4], dim=-1).reshape(n, k)
    return Int4Weight(pack_codes(codes), d, zero, 32)


def decode_tensor(tensor, mode: str, dequantize) -> QuantWeight:
    """One GGUF tensor to `mode` (int4|int8); `dequantize(tensor)` is the float fallback."""
    name = tensor.tensor_type.name
    shape = tuple(int(x) for x in reversed(tensor.shape.tolist()))
    if mode == "int4" and name in Q4_BLOCK_BYTES:
        return decode_q4(np.asarray(tensor.data), name, shape)
    return quantize(torch.from_numpy(np.asarray(dequantize(tensor), dtype=np.float32)), mode)
