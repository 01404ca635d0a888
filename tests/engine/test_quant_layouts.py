"""Quantized layouts against the `gguf` package's own dequantization, and the matmuls against them."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.loader import _unpermute, bundled_model_path
from engine.quant.gguf_blocks import auto_mode, decode_q4
from engine.quant.int4_unpack import detect_layout
from engine.quant.layouts import Int4Weight, Int8Weight
from engine.quant.linear import (
    OP_DTYPE,
    Int4Linear,
    Int8Linear,
    can_use_int4_op,
    can_use_int8_op,
    cpu_int4_pack,
)
from engine.quant.quantize import quantize_int4, quantize_int8

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bundled():
    reader = gguf.GGUFReader(str(bundled_model_path()))
    return {t.name: t for t in reader.tensors}


def gguf_float(tensor) -> torch.Tensor:
    shape = tuple(int(x) for x in reversed(tensor.shape.tolist()))
    return torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape).copy())


def shape_of(tensor) -> tuple[int, int]:
    return tuple(int(x) for x in reversed(tensor.shape.tolist()))


@pytest.mark.parametrize("name", ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.29.ffn_gate.weight"])
def test_q4_1_blocks_decode_to_what_gguf_dequantizes(bundled, name):
    tensor = bundled[name]
    assert tensor.tensor_type.name == "Q4_1"
    ours = decode_q4(np.asarray(tensor.data), "Q4_1", shape_of(tensor))
    ref = gguf_float(tensor)
    # scale + zero (zero = m + 8 d) against d * q + m: equal up to fp32 rounding of the sum.
    torch.testing.assert_close(ours.dequantize(), ref, rtol=0, atol=4 * torch.finfo(torch.float32).eps)
    assert ours.num_bytes == ref.numel() // 2 + 2 * 4 * ref.numel() // 32


def test_q4_0_blocks_decode_bit_for_bit():
    w = np.random.default_rng(0).normal(0, 0.05, (64, 256)).astype(np.float32)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0)
    ref = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_0).reshape(64, 256))
    ours = decode_q4(raw, "Q4_0", (64, 256)).dequantize()
    assert torch.equal(ours, ref)


def test_llama_unpermute_moves_quantized_rows_with_their_scales(bundled):
    tensor = bundled["blk.3.attn_k.weight"]
    layout = decode_q4(np.asarray(tensor.data), "Q4_1", shape_of(tensor))
    moved = _unpermute(layout, 3).dequantize()
    torch.testing.assert_close(moved, _unpermute(gguf_float(tensor), 3), rtol=0,
                               atol=4 * torch.finfo(torch.float32).eps)


def test_auto_mode_is_what_the_projections_carry():
    assert auto_mode(["Q4_1", "Q4_1"]) == "int4"
    assert auto_mode(["Q8_0"]) == "int8"
    assert auto_mode(["F16", "F32"]) == "none"


def test_float_quantizers_stay_within_half_a_step():
    w = torch.randn(48, 128)
    w4 = quantize_int4(w)
    step4 = w4.scale.repeat_interleave(32, dim=1)
    assert ((w4.dequantize() - w).abs() <= step4 / 2 + 1e-6).all()
    w8 = quantize_int8(w)
    assert ((w8.dequantize() - w).abs() <= w8.scale[:, None] / 2 + 1e-6).all()
    assert w8.q.abs().max() == 127


def int4_reference(layout: Int4Weight, x: torch.Tensor) -> torch.Tensor:
    """What the op computes: bf16 activations and bf16 scale/zero, accumulated in fp32."""
    n, k = layout.shape
    q = layout.codes().reshape(n, k // 32, 32).float() - 8
    w = q * layout.scale.to(OP_DTYPE).float()[..., None] + layout.zero.to(OP_DTYPE).float()[..., None]
    return F.linear(x.to(OP_DTYPE).float(), w.reshape(n, k))


@pytest.mark.parametrize("use_op", [True, False])
def test_int4_linear_matches_its_dequantized_weight(use_op):
    if use_op and not can_use_int4_op(CPU):
        pytest.skip("this torch has no CPU int4 weight-only matmul")
    layout = quantize_int4(torch.randn(96, 192) * 0.05)
    bias = torch.randn(96)
    x = torch.randn(5, 192)
    y = Int4Linear(layout, bias, CPU, use_op=use_op)(x)
    if use_op:
        ref = int4_reference(layout, x) + bias
        torch.testing.assert_close(y, ref, rtol=2e-2, atol=2e-2)
    else:  # the fallback multiplies by the exact fp32 dequantization
        torch.testing.assert_close(y, F.linear(x, layout.dequantize(), bias))


@pytest.mark.parametrize("use_op", [True, False])
def test_int8_linear_matches_its_dequantized_weight(use_op):
    if use_op and not can_use_int8_op(CPU):
        pytest.skip("this torch has no int8 weight-only matmul")
    layout = quantize_int8(torch.randn(80, 64) * 0.05)
    x = torch.randn(3, 64)
    y = Int8Linear(layout, None, CPU, use_op=use_op)(x)
    if use_op:
        w = layout.q.float() * layout.scale.to(OP_DTYPE).float()[:, None]
        torch.testing.assert_close(y, F.linear(x.to(OP_DTYPE).float(), w), rtol=2e-2, atol=2e-2)
    else:
        torch.testing.assert_close(y, F.linear(x, layout.dequantize()))


def test_int8_rows_past_the_threshold_multiply_densely_as_the_op_would():
    """Prefill-sized inputs take the dense path; each row must agree with the op's own answer for
    it (to a bf16 rounding step, from summation order), so a sequence gets the same numbers whether
    its rows arrive in a small step or a large one."""
    if not can_use_int8_op(CPU):
        pytest.skip("this torch has no int8 weight-only matmul")
    layout = quantize_int8(torch.randn(96, 128) * 0.05)
    linear = Int8Linear(layout, None, CPU)
    x = torch.randn(Int8Linear.dense_min_rows + 13, 128)
    dense = linear(x)
    by_op = torch.ops.aten._weight_int8pack_mm(x.to(OP_DTYPE), layout.q, layout.scale.to(OP_DTYPE)).float()
    step = by_op.abs().clamp_min(1e-3) * 2**-7  # one bf16 ulp at most
    assert ((dense - by_op).abs() <= step).all()
    few = x[:Int8Linear.dense_min_rows - 1]  # below the threshold: the op itself
    assert torch.equal(linear(few), torch.ops.aten._weight_int8pack_mm(
        few.to(OP_DTYPE), layout.q, layout.scale.to(OP_DTYPE)).float())
    w = layout.q.float() * layout.scale.to(OP_DTYPE).float()[:, None]
    torch.testing.assert_close(dense, F.linear(x.to(OP_DTYPE).float(), w), rtol=2e-2, atol=2e-2)


def test_stacked_rows_keep_each_parts_scales():
    a, b = quantize_int4(torch.randn(8, 64)), quantize_int4(torch.randn(4, 64) * 10)
    both = Int4Weight.cat_rows([a, b])
    assert torch.equal(both.dequantize(), torch.cat([a.dequantize(), b.dequantize()]))
    c, d = quantize_int8(torch.randn(8, 64)), quantize_int8(torch.randn(4, 64) * 10)
    assert torch.equal(Int8Weight.cat_rows([c, d]).dequantize(), torch.cat([c.dequantize(), d.dequantize()]))


def test_cpu_int4_packing_by_blocks_of_rows_equals_packing_at_once():
    if not can_use_int4_op(CPU):
        pytest.skip("this torch has no CPU int4 weight-only matmul")
    layout = quantize_int4(torch.randn(320, 64))
    whole = cpu_int4_pack(layout, num_rows=320)
    assert torch.equal(cpu_int4_pack(layout, num_rows=128), whole)  # 128 + 128 + 64 rows


def test_int4_codes_read_back_from_the_ops_packing():
    """The packed layout detected here decodes any weight the op packed, block-sized or larger."""
    if not can_use_int4_op(CPU):
        pytest.skip("this torch has no CPU int4 weight-only matmul")
    layout = detect_layout()
    assert layout is not None, "the CPU int4 packing matches none of the known layouts"
    weight = quantize_int4(torch.randn(192, 96))
    packed = cpu_int4_pack(weight, num_rows=128)  # packed in two parts, as a large weight is
    assert torch.equal(layout.unpack(packed, 192, 96), weight.codes())


def test_int4_rows_past_the_threshold_multiply_densely_as_the_op_would():
    if not can_use_int4_op(CPU) or detect_layout() is None:
        pytest.skip("no CPU int4 op whose packing can be read back")
    layout = quantize_int4(torch.randn(128, 96) * 0.05)
    linear = Int4Linear(layout, None, CPU)
    assert linear.unpacking is not None
    x = torch.randn(Int4Linear.dense_min_rows + 5, 96)
    dense = linear(x)
    by_op = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(OP_DTYPE), linear.packed, 32,
                                                        linear.scale_zero).float()
    step = by_op.abs().clamp_min(1e-3) * 2**-7  # one bf16 ulp at most
    assert ((dense - by_op).abs() <= step).all()
    torch.testing.assert_close(dense, int4_reference(layout, x), rtol=2e-2, atol=2e-2)
