"""bf16 linear layers whose weights are packed for oneDNN once, at load, for CPU decode.

A bf16 `F.linear` on CPU hands its weight to oneDNN (AMX / AVX512-BF16 kernels), which repacks it into
its blocked layout on every call; at decode sizes (one row per sequence) that repack costs as much as
the product itself. Packed once, the matmuls of the bundled model's decode step took about half the
time (1 thread: 23 -> 12 ms per step for 1 and for 16 rows), a 550-row prefill about the same. The
packed weight replaces the dense one (no second copy); `weight` unpacks it on demand.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from engine.cpu_linear import replace_linears


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """bf16 on a CPU where oneDNN can pack a bf16 linear weight (see `_cpu_packs_bf16`)."""
    return device.type == "cpu" and dtype == torch.bfloat16 and _cpu_packs_bf16()


@functools.cache
def _cpu_packs_bf16() -> bool:
    """Whether this torch has the packing ops and this CPU runs them: oneDNN refuses a bf16 reorder
    on CPUs without AVX512 (BW/VL/DQ) or AVX-NE-CONVERT (e.g. an AVX2-only EPYC), so try one."""
    ops = torch.ops.mkldnn
    if not (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise")):
        return False
    try:
        ops._reorder_linear_weight(torch.zeros(16, 16, dtype=torch.bfloat16), 1)
    except RuntimeError:
        return False
    return True


class PackedLinear(nn.Module):
    """`nn.Linear` over a oneDNN-packed weight (an opaque mkldnn tensor, kept as a buffer)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.register_buffer("packed", packed, persistent=False)
        self.bias = linear.bias

    @property
    def weight(self) -> torch.Tensor:
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def pack_linears(model: nn.Module) -> int:
    """Replace every bf16 `nn.Linear` of `model` by a `PackedLinear`; returns how many were packed."""
    return replace_linears(model, torch.bfloat16, PackedLinear)
