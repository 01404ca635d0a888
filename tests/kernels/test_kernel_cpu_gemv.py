"""The C++ small-batch linear (kernels.cpu_gemv) and the engine layer over it, against F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.cpu_linear import SmallBatchLinear, use_small_batch_linears
from kernels import cpu_gemv, cpu_native

pytestmark = pytest.mark.skipif(not cpu_native.available(), reason="no C++ toolchain to build the kernel")


@pytest.mark.parametrize("rows", range(1, cpu_gemv.MAX_ROWS + 1))
@pytest.mark.parametrize("width", [576, 64 + 5])  # whole vectors, and a scalar tail
def test_small_linear_matches_f_linear(rows, width):
    gen = torch.Generator().manual_seed(rows * 1000 + width)
    x = torch.randn(rows, width, generator=gen)
    w = torch.randn(200, width, generator=gen)  # 200 rows: split unevenly between threads
    out, ref = cpu_gemv.small_linear(x, w), F.linear(x, w)
    assert out.shape == ref.shape
    # fp32 sums in another order: a few ulps of the magnitudes summed
    bound = 1e-5 * (x.abs() @ w.abs().t())
    assert ((out - ref).abs() <= bound).all()


def test_each_row_is_computed_alone():
    """A sequence's numbers do not depend on which other rows share its step."""
    x, w = torch.randn(8, 96), torch.randn(64, 96)
    together = cpu_gemv.small_linear(x, w)
    for i in range(8):
        assert torch.equal(cpu_gemv.small_linear(x[i:i + 1], w)[0], together[i])


def test_layer_sends_small_inputs_to_the_kernel_and_large_ones_to_f_linear():
    dense = nn.Linear(48, 40, bias=True)
    layer = SmallBatchLinear(dense)
    assert layer.weight is dense.weight  # the same Parameter: no copy, a tied head stays tied
    with torch.inference_mode():
        small, large = torch.randn(2, 3, 48), torch.randn(cpu_gemv.MAX_ROWS + 1, 48)
        assert torch.equal(layer(small), (cpu_gemv.small_linear(small.reshape(6, 48), dense.weight)
                                          + dense.bias).reshape(2, 3, 40))
        assert torch.equal(layer(large), F.linear(large, dense.weight, dense.bias))


def test_swaps_only_fp32_linears():
    model = nn.Sequential(nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, 8).to(torch.bfloat16))
    assert use_small_batch_linears(model) == 1
    assert [type(m).__name__ for m in model] == ["SmallBatchLinear", "SiLU", "Linear"]
