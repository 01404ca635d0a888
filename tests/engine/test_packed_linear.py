"""bf16 linears packed for oneDNN: the same products as F.linear, and a model swapped in place."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.packed_linear import PackedLinear, can_pack, pack_linears

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(not can_pack(CPU, torch.bfloat16), reason="torch without oneDNN packing")


def _linear(n_in: int, n_out: int, bias: bool) -> nn.Linear:
    layer = nn.Linear(n_in, n_out, bias=bias).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.normal_()
        if bias:
            layer.bias.normal_()
    return layer


@pytest.mark.parametrize("rows", [1, 3, 16, 200])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_matches_f_linear(rows, bias):
    dense = _linear(96, 160, bias)
    packed = PackedLinear(dense)
    x = torch.randn(rows, 96).to(torch.bfloat16)
    with torch.inference_mode():
        out, ref = packed(x), F.linear(x, dense.weight, dense.bias)
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    # Same bf16 inputs, fp32 accumulation in both: equal up to the last bf16 rounding.
    assert float((out.float() - ref.float()).abs().max()) <= 2 ** -7 * float(ref.float().abs().max())
    assert torch.equal(packed.weight, dense.weight)


def test_pack_linears_swaps_only_bf16_linears():
    model = nn.Sequential(_linear(32, 64, False), nn.SiLU(), _linear(64, 32, True), nn.Linear(32, 8))
    x = torch.randn(5, 32).to(torch.bfloat16)
    with torch.inference_mode():
        before = model[2](F.silu(model[0](x)))
    assert pack_linears(model) == 2
    assert [type(m).__name__ for m in model] == ["PackedLinear", "SiLU", "PackedLinear", "Linear"]
    with torch.inference_mode():
        after = model[2](model[1](model[0](x)))
    assert float((after.float() - before.float()).abs().max()) <= 2 ** -6 * float(before.float().abs().max())
    assert not can_pack(CPU, torch.float32)
