"""Writing new K/V into the paged cache in Triton, as is or quantized to int8 on the way in.

One program per token writes that token's K and V for every KV head, so a step's new tokens cost one
launch whatever their number; slots < 0 (padding) are skipped without a host-side filter, which keeps
the op free of synchronisation for CUDA graphs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._tile import next_pow2

INT8_MAX = tl.constexpr(127.0)


def store_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write key/value [num_tokens, num_kv_heads, head_dim] into their slots (slot < 0: skip)."""
    _launch_store(key, value, k_cache, v_cache, k_cache, v_cache, slot_mapping, quantize=False)


def store_kv_int8(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  k_scales: torch.Tensor, v_scales: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Quantize key/value per (token, KV head) and write int8 values and scales into their slots."""
    _launch_store(key, value, k_cache, v_cache, k_scales, v_scales, slot_mapping, quantize=True)


def _launch_store(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  k_scales: torch.Tensor, v_scales: torch.Tensor, slot_mapping: torch.Tensor,
                  quantize: bool) -> None:
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    if not quantize:  # convert like torch does (round to nearest even) before the bit copy
        key, value = key.to(k_cache.dtype), value.to(v_cache.dtype)
    key = key if key.stride(-1) == 1 else key.contiguous()
    value = value if value.stride(-1) == 1 else value.contiguous()
    _store_kv_kernel[(num_tokens,)](
        key, value, k_cache, v_cache, k_scales, v_scales, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        *k_cache.stride()[:3], *v_cache.stride()[:3], *k_scales.stride()[:3], *v_scales.stride()[:3],
        PAGE_SIZE=k_cache.shape[1], NUM_KV_HEADS=num_kv_heads, BLOCK_KVH=next_pow2(num_kv_heads),
        HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim), QUANTIZE=quantize,
    )


@triton.jit
def int8_scales(amax):
    """One scale per row from its max |x| (1 for an all-zero row), as reference.quantize_int8."""
    return tl.where(amax > 0.0, amax / INT8_MAX, 1.0)


@triton.jit
def int8_values(x, scales):
    """x / scale rounded half away from zero and clamped to +-127, as reference.quantize_int8."""
    scaled = x / scales[:, None]
    rounded = tl.where(scaled < 0.0, -tl.floor(-scaled + 0.5), tl.floor(scaled + 0.5))
    return tl.minimum(tl.maximum(rounded, -INT8_MAX), INT8_MAX).to(tl.int8)


@triton.jit
def _quantize_rows(x, mask):
    """Symmetric int8 per row: (values, scales)."""
    scales = int8_scales(tl.max(tl.where(mask, tl.abs(x), 0.0), axis=1))
    return int8_values(x, scales), scales


@triton.jit
def _store_rows(x_ptr, cache_ptr, scale_ptr, x_rows, cache_rows, scale_rows, dims, mask, row_mask,
                QUANTIZE: tl.constexpr):
    x = tl.load(x_ptr + x_rows[:, None] + dims[None, :], mask=mask, other=0.0)
    if QUANTIZE:
        values, scales = _quantize_rows(x.to(tl.float32), mask)
        tl.store(cache_ptr + cache_rows[:, None] + dims[None, :], values, mask=mask)
        tl.store(scale_ptr + scale_rows, scales.to(scale_ptr.dtype.element_ty), mask=row_mask)
    else:
        tl.store(cache_ptr + cache_rows[:, None] + dims[None, :], x.to(cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, slots_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcb, stride_kct, stride_kch, stride_vcb, stride_vct, stride_vch,
    stride_ksb, stride_kst, stride_ksh, stride_vsb, stride_vst, stride_vsh,
    PAGE_SIZE: tl.constexpr, NUM_KV_HEADS: tl.constexpr, BLOCK_KVH: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, QUANTIZE: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // PAGE_SIZE
    offset = slot % PAGE_SIZE
    heads = tl.arange(0, BLOCK_KVH)
    dims = tl.arange(0, BLOCK_D)
    row_mask = heads < NUM_KV_HEADS
    mask = row_mask[:, None] & (dims < HEAD_DIM)[None, :]
    _store_rows(key_ptr, k_cache_ptr, k_scale_ptr, token * stride_kt + heads * stride_kh,
                block * stride_kcb + offset * stride_kct + heads * stride_kch,
                block * stride_ksb + offset * stride_kst + heads * stride_ksh, dims, mask, row_mask, QUANTIZE)
    _store_rows(value_ptr, v_cache_ptr, v_scale_ptr, token * stride_vt + heads * stride_vh,
                block * stride_vcb + offset * stride_vct + heads * stride_vch,
                block * stride_vsb + offset * stride_vst + heads * stride_vsh, dims, mask, row_mask, QUANTIZE)
