"""Paged prefill attention in Triton: chunks of new tokens, causal over cached context plus themselves.

One launch covers every sequence of the flattened batch whatever its lengths: a program owns one
block of BLOCK_Q new tokens of one sequence for one KV head, and the query heads sharing that KV head
are packed into the same rows (BLOCK_M = BLOCK_Q x padded group), so each K/V tile is read once per
group. Programs whose block starts past their sequence's chunk return at once.

New K/V must already be in the cache (store_kv runs first), so the chunk's own keys are read through
the block table like the cached prefix.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._tile import (
    MIN_DOT,
    check_page_size,
    dot_settings,
    next_pow2,
    tile_dot,
    tile_layout,
    tile_operand,
    tile_pages,
)
from kernels.decode import LOG2E

BLOCK_M = 64  # query rows (tokens x packed heads) per program
KV_TILE = 64  # keys per iteration


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                            seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """A chunk of new tokens per sequence. q: [num_tokens, num_heads, head_dim] -> same shape."""
    return prefill_attention(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale)


def paged_prefill_attention_int8(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                 k_scales: torch.Tensor, v_scales: torch.Tensor, block_tables: torch.Tensor,
                                 query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                                 scale: float) -> torch.Tensor:
    """As `paged_prefill_attention` over an int8 cache with per-(slot, KV head) scales."""
    return prefill_attention(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale,
                             scales=(k_scales, v_scales))


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      block_tables: torch.Tensor, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                      scale: float, *, scales: tuple[torch.Tensor, torch.Tensor] | None = None,
                      out: torch.Tensor | None = None, block_m: int = BLOCK_M,
                      tile: int = KV_TILE) -> torch.Tensor:
    """Prefill attention with an optional int8 cache (`scales`), output buffer, row block and K/V tile.

    Reads the longest chunk back to the host once to size the grid (prefill is not graph-captured).
    """
    num_tokens, num_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_cache.shape
    check_page_size(page_size)
    q = q if q.stride(-1) == 1 else q.contiguous()
    out = torch.empty_like(q) if out is None else out
    num_seqs = seq_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    group = num_heads // num_kv_heads
    group_pad = next_pow2(group)
    block_q = max(1, block_m // group_pad)
    max_chunk = int((query_start_loc[1:] - query_start_loc[:-1]).max())
    k_scales, v_scales = scales if scales is not None else (k_cache, v_cache)
    grid = (triton.cdiv(max_chunk, block_q), num_seqs, num_kv_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, k_scales, v_scales, block_tables, query_start_loc, seq_lens, out,
        scale * LOG2E, block_tables.shape[1],
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
        *k_scales.stride()[:3], *v_scales.stride()[:3], block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=group_pad, BLOCK_Q=block_q, BLOCK_M=block_q * group_pad, HEAD_DIM=head_dim,
        BLOCK_D=max(MIN_DOT, next_pow2(head_dim)), **tile_layout(tile, page_size), IS_INT8=scales is not None,
        **dot_settings(q.dtype),
    )
    return out


@triton.jit
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, tables_ptr, query_start_ptr, seq_lens_ptr,
    out_ptr, scale_log2, table_width,
    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_ksb, stride_kst, stride_ksh, stride_vsb, stride_vst, stride_vsh, stride_table,
    stride_ot, stride_oh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PAGE_SIZE: tl.constexpr, TILE: tl.constexpr,
    PAGES: tl.constexpr, SUB: tl.constexpr, IS_INT8: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    q_block = tl.program_id(0)
    seq = tl.program_id(1)
    kv_head = tl.program_id(2)
    chunk_start = tl.load(query_start_ptr + seq)
    chunk_len = tl.load(query_start_ptr + seq + 1) - chunk_start
    if q_block * BLOCK_Q >= chunk_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - chunk_len

    rows = tl.arange(0, BLOCK_M)
    tokens = q_block * BLOCK_Q + rows // GROUP_PAD
    in_group = rows % GROUP_PAD
    heads = kv_head * GROUP + in_group
    row_mask = (tokens < chunk_len) & (in_group < GROUP)
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < HEAD_DIM
    io_mask = row_mask[:, None] & dim_mask[None, :]
    q_rows = (chunk_start + tokens).to(tl.int64) * stride_qt + heads * stride_qh
    q = tl.load(q_ptr + q_rows[:, None] + dims[None, :], mask=io_mask, other=0.0)
    positions = context_len + tokens

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    table_row = tables_ptr + seq.to(tl.int64) * stride_table
    num_pages = tl.minimum(tl.cdiv(seq_len, PAGE_SIZE), table_width)
    kv_end = tl.minimum(seq_len, context_len + tl.minimum((q_block + 1) * BLOCK_Q, chunk_len))
    for tile_start in range(0, kv_end, TILE):
        blocks, offsets = tile_pages(table_row, tile_start, num_pages, PAGE_SIZE, TILE, PAGES, SUB)
        keys = tile_start + tl.arange(0, TILE)
        key_mask = keys < kv_end
        kv_mask = key_mask[:, None] & dim_mask[None, :]
        k_rows = blocks * stride_kb + offsets * stride_kt + kv_head * stride_kh
        k = tl.load(k_cache_ptr + k_rows[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        scores = tile_dot(q, tl.trans(tile_operand(k, q.dtype, IS_INT8)), UPCAST_DOT, DOT_PRECISION)
        if IS_INT8:
            k_scale = tl.load(k_scale_ptr + blocks * stride_ksb + offsets * stride_kst + kv_head * stride_ksh,
                              mask=key_mask, other=0.0).to(tl.float32)
            scores = scores * k_scale[None, :]
        visible = (keys[None, :] <= positions[:, None]) & key_mask[None, :]
        scores = tl.where(visible, scores * scale_log2, float("-inf"))
        # Row max stays finite: key 0 is visible to every row, and tile 0 comes first.
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v_rows = blocks * stride_vb + offsets * stride_vt + kv_head * stride_vh
        v = tl.load(v_cache_ptr + v_rows[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        if IS_INT8:
            v_scale = tl.load(v_scale_ptr + blocks * stride_vsb + offsets * stride_vst + kv_head * stride_vsh,
                              mask=key_mask, other=0.0).to(tl.float32)
            p = p * v_scale[None, :]
        acc = acc * alpha[:, None] + tile_dot(p.to(q.dtype), tile_operand(v, q.dtype, IS_INT8), UPCAST_DOT,
                                             DOT_PRECISION)
        m_i = m_new

    result = acc / l_i[:, None]
    out_rows = (chunk_start + tokens).to(tl.int64) * stride_ot + heads * stride_oh
    tl.store(out_ptr + out_rows[:, None] + dims[None, :], result.to(out_ptr.dtype.element_ty), mask=io_mask)
