"""Linear layers over quantized weights.

CPU: torch's weight-only matmuls, `_weight_int4pack_mm_for_cpu` (int4, group-wise scale + zero) and
`_weight_int8pack_mm` (int8, per-row scale). Measured here (torch 2.13, 1 thread, a 3072x576
weight): with bf16 activations they beat a dense bf16 matmul for up to ~4 rows (0.10 ms against
0.22 ms at one row) and lose beyond (0.64 ms against 0.25 ms at 16 rows); with fp32 activations they
are 10-100x slower, so activations go through the op in bf16 whatever the model's dtype, and the
op wants its scales in the activations' dtype (bf16).
The ops' cost grows with the rows at about half the dense fp32 rate (AVX2 EPYC, 2 threads,
one SmolLM2-135M layer's four projections at 512 rows: int8 47 ms, int4 54 ms, fp32 dense 23 ms), so from
`dense_min_rows` rows on (prefill) a layer dequantizes its weight and multiplies densely, rounding
the input and the output to bf16 as the op does: with fp32 activations both paths give the same
numbers up to summation order (with bf16 activations the dequantized weight is rounded to bf16
too). Those rows then cost 26 ms (int8) and 33 ms (int4: it reads its codes back out of the op's
packing, int4_unpack.py; where that packing is not understood, the op serves every row count). The
thresholds are where the two paths cost the same there: 48 rows for int8, 96 for int4.
Elsewhere (CUDA, or a torch without the op): the weight is dequantized per call into the
activations' dtype and multiplied densely; correct, not fast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.quant.int4_unpack import PackLayout, detect_layout
from engine.quant.layouts import Int4Weight, Int8Weight

OP_DTYPE = torch.bfloat16


def can_use_int4_op(device: torch.device, out_features: int = 16) -> bool:
    """The op exists here, and packs this many rows (it wants a multiple of 16)."""
    aten = torch.ops.aten
    return device.type == "cpu" and hasattr(aten, "_convert_weight_to_int4pack_for_cpu") \
        and hasattr(aten, "_weight_int4pack_mm_for_cpu") and out_features % 16 == 0


def can_use_int8_op(device: torch.device) -> bool:
    return device.type == "cpu" and hasattr(torch.ops.aten, "_weight_int8pack_mm")


PACK_ROWS = 2048  # rows packed at a time: the op wants int32 codes, 8x the packed size


def cpu_int4_pack(weight: Int4Weight, num_rows: int = PACK_ROWS) -> torch.Tensor:
    """The CPU op's packing, a block of rows at a time (the same bytes as packing all rows at once,
    for blocks of a multiple of 64 rows), so an 8B layer's int32 codes never exist all at once."""
    parts = []
    for start in range(0, weight.shape[0], num_rows):
        codes = weight.take_rows(slice(start, start + num_rows)).codes().to(torch.int32)
        parts.append(torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class Int4Linear(nn.Module):
    dense_min_rows = 96  # from this many rows on, dequantize and multiply densely (see above)

    def __init__(self, weight: Int4Weight, bias: torch.Tensor | None, device: torch.device,
                 use_op: bool | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.group_size = weight.group_size
        self.use_op = can_use_int4_op(device, self.out_features) if use_op is None else use_op
        layout = detect_layout() if self.use_op else None
        can_unpack = layout is not None and layout.can_unpack(self.out_features)
        self.unpacking: PackLayout | None = layout if can_unpack else None  # for the dense path
        if self.use_op:
            self.register_buffer("packed", cpu_int4_pack(weight))
            scale_zero = torch.stack([weight.scale.t(), weight.zero.t()], dim=-1)
            self.register_buffer("scale_zero", scale_zero.to(OP_DTYPE).contiguous())
        else:
            self.register_buffer("packed", weight.packed.to(device))
            self.register_buffer("scale", weight.scale.to(device))
            self.register_buffer("zero", weight.zero.to(device))
        self.bias = None if bias is None else nn.Parameter(bias.to(device), requires_grad=False)

    def layout(self) -> Int4Weight:
        """The weight as loaded (the fallback path's buffers; the op path keeps the op's packing)."""
        return Int4Weight(self.packed, self.scale, self.zero, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.unpacking is not None and x2.shape[0] >= self.dense_min_rows:
            y = self.dense_like_op(x2)
        elif self.use_op:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2.to(OP_DTYPE), self.packed, self.group_size, self.scale_zero).to(x.dtype)
        else:
            y = F.linear(x2, self.layout().dequantize(x.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def dense_like_op(self, x2: torch.Tensor) -> torch.Tensor:
        """The op's numbers (bf16 input, bf16 scale and zero, bf16 output) from one dense matmul."""
        assert self.unpacking is not None
        n, k, g = self.out_features, self.in_features, self.group_size
        dtype = compute_dtype(x2)
        codes = self.unpacking.unpack(self.packed, n, k).reshape(n, k // g, g)
        scale, zero = self.scale_zero.to(dtype).permute(2, 1, 0)  # each [n, k // g]
        weight = codes.to(dtype).sub_(8).mul_(scale[..., None]).add_(zero[..., None])
        return matmul_as_op(x2, weight.reshape(n, k))


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of a dense path's matmul: the activations', unless that is fp16 (no fast CPU gemm)."""
    return x.dtype if x.dtype in (torch.float32, torch.bfloat16) else torch.float32


def matmul_as_op(x2: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x2 @ weight.T with the ops' roundings: the input and the output pass through bf16."""
    return F.linear(x2.to(OP_DTYPE).to(weight.dtype), weight).to(OP_DTYPE).to(x2.dtype)


class Int8Linear(nn.Module):
    """Per-row int8; its codes and fp32 scales may be shared with an Int8Embedding (tied head)."""

    dense_min_rows = 48  # from this many rows on, dequantize and multiply densely (see above)

    def __init__(self, weight: Int8Weight, bias: torch.Tensor | None, device: torch.device,
                 use_op: bool | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.use_op = can_use_int8_op(device) if use_op is None else use_op
        self.register_buffer("q", weight.q.to(device))
        self.register_buffer("scale", weight.scale.to(device))
        self.register_buffer("op_scale", weight.scale.to(device, OP_DTYPE))
        self.bias = None if bias is None else nn.Parameter(bias.to(device), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.use_op and x2.shape[0] < self.dense_min_rows:
            y = torch.ops.aten._weight_int8pack_mm(x2.to(OP_DTYPE), self.q, self.op_scale).to(x.dtype)
        elif self.use_op:
            y = self.dense_like_op(x2)
        else:
            y = F.linear(x2, Int8Weight(self.q, self.scale).dequantize(x.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def dense_like_op(self, x2: torch.Tensor) -> torch.Tensor:
        """What the op computes (bf16 input, bf16 scales, bf16 output), as one dense matmul in the
        activations' dtype: many rows at the speed of a float weight, for 1 byte a weight at rest."""
        dtype = compute_dtype(x2)
        return matmul_as_op(x2, self.q.to(dtype).mul_(self.op_scale.to(dtype)[:, None]))


class Int8Embedding(nn.Module):
    """Embedding rows dequantized on lookup: only the looked-up rows ever exist in float."""

    def __init__(self, weight: Int8Weight, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.dtype = dtype
        self.register_buffer("q", weight.q.to(device))
        self.register_buffer("scale", weight.scale.to(device))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.q[ids].float() * self.scale[ids, None]).to(self.dtype)
