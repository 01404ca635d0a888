"""RoPE fused with the K/V store in Triton: one launch rotates q in place, rotates the new keys on
their way into the cache and stores the values, instead of a dozen elementwise ops per layer plus
the store. Rotate-half convention (HF Llama), cos/sin from a precomputed fp32 table
(`reference.rotary_cos_sin`); the rotation is computed in fp32 and rounded once.

One program per token; slots < 0 still get their q rotated but store nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._tile import next_pow2
from kernels.cache import int8_scales, int8_values


def rotary_store_kv(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, slot_mapping: torch.Tensor, positions: torch.Tensor,
                    cos_sin: torch.Tensor) -> torch.Tensor:
    """Rotate q in place (returned) and key by RoPE at `positions`, then store key/value."""
    _launch(q, key, value, (k_cache, v_cache, k_cache, v_cache), slot_mapping, positions, cos_sin, False)
    return q


def rotary_store_kv_int8(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                         v_cache: torch.Tensor, k_scales: torch.Tensor, v_scales: torch.Tensor,
                         slot_mapping: torch.Tensor, positions: torch.Tensor,
                         cos_sin: torch.Tensor) -> torch.Tensor:
    """`rotary_store_kv` into an int8 cache with per-(slot, KV head) scales."""
    _launch(q, key, value, (k_cache, v_cache, k_scales, v_scales), slot_mapping, positions, cos_sin, True)
    return q


def _launch(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            caches: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], slot_mapping: torch.Tensor,
            positions: torch.Tensor, cos_sin: torch.Tensor, quantize: bool) -> None:
    num_tokens, num_heads, head_dim = q.shape
    if head_dim % 2 or q.stride(-1) != 1:
        raise ValueError("rotary_store_kv needs an even head dim and q contiguous in its last dim")
    if num_tokens == 0:
        return
    k_cache, v_cache, k_scales, v_scales = caches
    key = key if key.stride(-1) == 1 else key.contiguous()
    if not quantize:  # values are copied bit for bit after torch's own dtype conversion
        value = value.to(v_cache.dtype)
    value = value if value.stride(-1) == 1 else value.contiguous()
    num_kv_heads = key.shape[1]
    _rotary_store_kernel[(num_tokens,)](
        q, key, value, k_cache, v_cache, k_scales, v_scales, slot_mapping, positions, cos_sin,
        q.stride(0), q.stride(1), key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        *k_cache.stride()[:3], *v_cache.stride()[:3], *k_scales.stride()[:3], *v_scales.stride()[:3],
        cos_sin.stride(0),
        PAGE_SIZE=k_cache.shape[1], NUM_HEADS=num_heads, BLOCK_H=next_pow2(num_heads),
        NUM_KV_HEADS=num_kv_heads, BLOCK_KVH=next_pow2(num_kv_heads), HALF=head_dim // 2,
        BLOCK_HALF=next_pow2(head_dim // 2), HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim),
        QUANTIZE=quantize,
    )


@triton.jit
def _rotate(x_ptr, rows, dims, mask, cos, sin, HALF: tl.constexpr):
    """(first half, second half) of rows of x rotated: x1 cos - x2 sin, x2 cos + x1 sin (fp32)."""
    x1 = tl.load(x_ptr + rows[:, None] + dims[None, :], mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + rows[:, None] + HALF + dims[None, :], mask=mask, other=0.0).to(tl.float32)
    return x1 * cos[None, :] - x2 * sin[None, :], x2 * cos[None, :] + x1 * sin[None, :]


@triton.jit
def _store_halves(ptr, rows, dims, mask, first, second, HALF: tl.constexpr):
    tl.store(ptr + rows[:, None] + dims[None, :], first.to(ptr.dtype.element_ty), mask=mask)
    tl.store(ptr + rows[:, None] + HALF + dims[None, :], second.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_store_kernel(
    q_ptr, key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, slots_ptr,
    positions_ptr, cos_sin_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcb, stride_kct, stride_kch, stride_vcb, stride_vct, stride_vch,
    stride_ksb, stride_kst, stride_ksh, stride_vsb, stride_vst, stride_vsh, stride_cos,
    PAGE_SIZE: tl.constexpr, NUM_HEADS: tl.constexpr, BLOCK_H: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
    BLOCK_KVH: tl.constexpr, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, QUANTIZE: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token).to(tl.int64)
    half = tl.arange(0, BLOCK_HALF)
    half_mask = half < HALF
    cos = tl.load(cos_sin_ptr + position * stride_cos + half, mask=half_mask, other=0.0).to(tl.float32)
    sin = tl.load(cos_sin_ptr + position * stride_cos + HALF + half, mask=half_mask, other=0.0).to(tl.float32)

    heads = tl.arange(0, BLOCK_H)
    q_rows = token * stride_qt + heads * stride_qh
    q_mask = (heads < NUM_HEADS)[:, None] & half_mask[None, :]
    q1, q2 = _rotate(q_ptr, q_rows, half, q_mask, cos, sin, HALF)
    _store_halves(q_ptr, q_rows, half, q_mask, q1, q2, HALF)

    slot = tl.load(slots_ptr + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // PAGE_SIZE
    offset = slot % PAGE_SIZE
    kv_heads = tl.arange(0, BLOCK_KVH)
    kv_head_mask = kv_heads < NUM_KV_HEADS
    k_mask = kv_head_mask[:, None] & half_mask[None, :]
    k1, k2 = _rotate(key_ptr, token * stride_kt + kv_heads * stride_kh, half, k_mask, cos, sin, HALF)
    k_rows = block * stride_kcb + offset * stride_kct + kv_heads * stride_kch
    dims = tl.arange(0, BLOCK_D)
    v_mask = kv_head_mask[:, None] & (dims < HEAD_DIM)[None, :]
    v = tl.load(value_ptr + (token * stride_vt + kv_heads * stride_vh)[:, None] + dims[None, :], mask=v_mask,
                other=0.0)
    v_rows = block * stride_vcb + offset * stride_vct + kv_heads * stride_vch
    if QUANTIZE:
        k_amax = tl.maximum(tl.max(tl.where(k_mask, tl.abs(k1), 0.0), axis=1),
                            tl.max(tl.where(k_mask, tl.abs(k2), 0.0), axis=1))
        k_scales = int8_scales(k_amax)
        _store_halves(k_cache_ptr, k_rows, half, k_mask, int8_values(k1, k_scales), int8_values(k2, k_scales),
                      HALF)
        tl.store(k_scale_ptr + block * stride_ksb + offset * stride_kst + kv_heads * stride_ksh,
                 k_scales.to(k_scale_ptr.dtype.element_ty), mask=kv_head_mask)
        v32 = v.to(tl.float32)
        v_scales = int8_scales(tl.max(tl.where(v_mask, tl.abs(v32), 0.0), axis=1))
        tl.store(v_cache_ptr + v_rows[:, None] + dims[None, :], int8_values(v32, v_scales), mask=v_mask)
        tl.store(v_scale_ptr + block * stride_vsb + offset * stride_vst + kv_heads * stride_vsh,
                 v_scales.to(v_scale_ptr.dtype.element_ty), mask=kv_head_mask)
    else:
        _store_halves(k_cache_ptr, k_rows, half, k_mask, k1, k2, HALF)
        tl.store(v_cache_ptr + v_rows[:, None] + dims[None, :], v.to(v_cache_ptr.dtype.element_ty),
                 mask=v_mask)
