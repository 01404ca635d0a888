"""The two weight layouts, as loaded (before any kernel-specific packing).

Int4Weight: unsigned 4-bit codes, two per byte (even column in the low nibble), with an fp32 scale
and zero per group of `group_size` columns of a row: w = (q - 8) * scale + zero. That is the
convention of torch's int4 matmuls, and GGUF's Q4_1 (w = d * q + m) maps onto it with scale = d,
zero = m + 8 d; Q4_0 (w = d * (q - 8)) with zero = 0.
Int8Weight: signed 8-bit codes with one fp32 scale per row (output channel): w = q * scale, the
layout of torch's `_weight_int8pack_mm`. Its rows also serve as a dequantize-per-row embedding.
Both are row-major [out_features, in_features], so a row permutation (llama.cpp's Q/K unpermute) and
stacking rows (fused QKV and gate/up) apply to the codes and their scales together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

QUANTIZATION_MODES = ("auto", "none", "int8", "int4")
INT4_GROUP_SIZE = 32  # GGUF's block size; float checkpoints use it too


@dataclass(slots=True)
class Int4Weight:
    packed: torch.Tensor  # uint8 [N, K // 2]
    scale: torch.Tensor  # fp32 [N, K // group_size]
    zero: torch.Tensor  # fp32 [N, K // group_size], the value of code 8
    group_size: int = INT4_GROUP_SIZE

    @property
    def shape(self) -> tuple[int, int]:
        return self.packed.shape[0], self.packed.shape[1] * 2

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scale, self.zero))

    def codes(self) -> torch.Tensor:
        """The 4-bit codes as uint8 [N, K], values 0..15."""
        lo, hi = self.packed & 15, self.packed >> 4
        return torch.stack([lo, hi], dim=-1).reshape(self.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        n, k = self.shape
        q = self.codes().reshape(n, k // self.group_size, self.group_size).to(dtype) - 8
        w = q * self.scale.to(dtype)[..., None] + self.zero.to(dtype)[..., None]
        return w.reshape(n, k)

    def take_rows(self, index: torch.Tensor | slice) -> Int4Weight:
        return Int4Weight(self.packed[index], self.scale[index], self.zero[index], self.group_size)

    @staticmethod
    def cat_rows(parts: list[Int4Weight]) -> Int4Weight:
        return Int4Weight(torch.cat([p.packed for p in parts]), torch.cat([p.scale for p in parts]),
                          torch.cat([p.zero for p in parts]), parts[0].group_size)


@dataclass(slots=True)
class Int8Weight:
    q: torch.Tensor  # int8 [N, K]
    scale: torch.Tensor  # fp32 [N]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    @property
    def num_bytes(self) -> int:
        return self.q.numel() + self.scale.numel() * self.scale.element_size()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.q.to(dtype) * self.scale.to(dtype)[:, None]

    def take_rows(self, index: torch.Tensor) -> Int8Weight:
        return Int8Weight(self.q[index], self.scale[index])

    @staticmethod
    def cat_rows(parts: list[Int8Weight]) -> Int8Weight:
        return Int8Weight(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]))


QuantWeight = Int4Weight | Int8Weight


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K] codes 0..15 to two per byte, even column in the low nibble."""
    return codes[:, 0::2] | (codes[:, 1::2] << 4)
