"""Paged decode attention in Triton: one query token per sequence, split-KV (flash-decoding).

Each program owns one (sequence, KV head, split): the query heads that share the KV head are packed
into the rows of one tile, so every K/V tile is read once for the whole group (GQA). Splits cut a
long context into ranges handled in parallel; each writes a partial output and its log-sum-exp, and a
second small kernel merges them. With one split the first kernel writes the output directly.

No host synchronisation: the split count comes from tensor shapes (the block-table width bounds every
sequence's length), so a decode step can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels._runtime import num_compute_units
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

LOG2E = 1.4426950408889634


DECODE_TILE = 64  # tokens per K/V tile: 16 KiB of bf16 K at head dim 128
MIN_TILES_PER_SPLIT = 4
MAX_SPLITS = 64


@dataclass(slots=True, frozen=True)
class DecodePlan:
    """How a decode launch is cut: `num_splits` ranges of `split_len` tokens, read `tile` at a time."""

    num_splits: int
    split_len: int
    tile: int


def plan_decode(num_seqs: int, num_kv_heads: int, max_len_bound: int, device: torch.device,
                num_splits: int | None = None, tile: int = DECODE_TILE) -> DecodePlan:
    """Split long contexts only when (sequence, KV head) pairs alone leave compute units idle.

    Each split keeps at least `MIN_TILES_PER_SPLIT` tiles so the merge stays cheap next to the reads.
    """
    num_tiles = max(1, triton.cdiv(max_len_bound, tile))
    if num_splits is None:
        wanted = triton.cdiv(2 * num_compute_units(device), max(1, num_seqs * num_kv_heads))
        num_splits = min(wanted, triton.cdiv(num_tiles, MIN_TILES_PER_SPLIT), MAX_SPLITS)
    num_splits = max(1, min(num_splits, num_tiles))
    tiles_per_split = triton.cdiv(num_tiles, num_splits)
    return DecodePlan(triton.cdiv(num_tiles, tiles_per_split), tiles_per_split * tile, tile)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """One query token per sequence. q: [num_seqs, num_heads, head_dim] -> same shape."""
    return decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale)


def paged_decode_attention_int8(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                k_scales: torch.Tensor, v_scales: torch.Tensor, block_tables: torch.Tensor,
                                seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """As `paged_decode_attention` over an int8 cache with per-(slot, KV head) scales."""
    return decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale, scales=(k_scales, v_scales))


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float, *,
                     scales: tuple[torch.Tensor, torch.Tensor] | None = None, num_splits: int | None = None,
                     tile: int = DECODE_TILE, out: torch.Tensor | None = None) -> torch.Tensor:
    """Decode attention with an optional int8 cache (`scales`), split count, tile and output buffer."""
    check_page_size(k_cache.shape[1])
    q = q if q.stride(-1) == 1 else q.contiguous()
    out = torch.empty_like(q) if out is None else out
    num_seqs, num_heads, head_dim = q.shape
    plan = plan_decode(num_seqs, k_cache.shape[2], block_tables.shape[1] * k_cache.shape[1], q.device,
                       num_splits, tile)
    if plan.num_splits == 1:
        _launch_splits(q, k_cache, v_cache, scales, block_tables, seq_lens, scale, plan, out, (out, out))
        return out
    workspace = split_workspace(num_seqs, num_heads, plan.num_splits, head_dim, q.device)
    _launch_splits(q, k_cache, v_cache, scales, block_tables, seq_lens, scale, plan, out, workspace)
    part_out, part_lse = workspace
    _merge_splits_kernel[(num_seqs, num_heads)](
        part_out, part_lse, out, part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse.stride(0), part_lse.stride(1), out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim), NUM_SPLITS=plan.num_splits,
        BLOCK_S=next_pow2(plan.num_splits),
    )
    return out


def _launch_splits(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   scales: tuple[torch.Tensor, torch.Tensor] | None, block_tables: torch.Tensor,
                   seq_lens: torch.Tensor, scale: float, plan: DecodePlan, out: torch.Tensor,
                   workspace: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The per-split kernel; with one split it writes `out` and ignores `workspace`."""
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    k_scales, v_scales = scales if scales is not None else (k_cache, v_cache)
    part_out, part_lse = workspace
    group = num_heads // num_kv_heads
    _decode_split_kernel[(num_seqs, num_kv_heads, plan.num_splits)](
        q, k_cache, v_cache, k_scales, v_scales, block_tables, seq_lens, out, part_out, part_lse,
        scale * LOG2E, block_tables.shape[1], plan.split_len,
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
        *k_scales.stride()[:3], *v_scales.stride()[:3], block_tables.stride(0),
        out.stride(0), out.stride(1), part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse.stride(0), part_lse.stride(1),
        GROUP=group, BLOCK_H=max(MIN_DOT, next_pow2(group)), HEAD_DIM=head_dim,
        BLOCK_D=max(MIN_DOT, next_pow2(head_dim)), **tile_layout(plan.tile, k_cache.shape[1]),
        NUM_SPLITS=plan.num_splits, IS_INT8=scales is not None, **dot_settings(q.dtype),
    )


def split_workspace(num_seqs: int, num_heads: int, num_splits: int, head_dim: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-split partial outputs [S, H, splits, D] and their base-2 log-sum-exps [S, H, splits], fp32."""
    part_out = torch.empty((num_seqs, num_heads, num_splits, head_dim), dtype=torch.float32, device=device)
    part_lse = torch.empty((num_seqs, num_heads, num_splits), dtype=torch.float32, device=device)
    return part_out, part_lse


@triton.jit
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, tables_ptr, seq_lens_ptr,
    out_ptr, part_out_ptr, part_lse_ptr,
    scale_log2, table_width, split_len,
    stride_qs, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_ksb, stride_kst, stride_ksh, stride_vsb, stride_vst, stride_vsh, stride_table,
    stride_os, stride_oh, stride_ps, stride_ph, stride_pk, stride_ls, stride_lh,
    GROUP: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    PAGE_SIZE: tl.constexpr, TILE: tl.constexpr, PAGES: tl.constexpr, SUB: tl.constexpr,
    NUM_SPLITS: tl.constexpr, IS_INT8: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)
    num_pages = tl.minimum(tl.cdiv(seq_len, PAGE_SIZE), table_width)

    rows = tl.arange(0, BLOCK_H)
    heads = kv_head * GROUP + rows
    dims = tl.arange(0, BLOCK_D)
    row_mask = rows < GROUP
    dim_mask = dims < HEAD_DIM
    q = tl.load(q_ptr + seq * stride_qs + heads[:, None] * stride_qh + dims[None, :],
                mask=row_mask[:, None] & dim_mask[None, :], other=0.0)

    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    table_row = tables_ptr + seq.to(tl.int64) * stride_table
    for tile_start in range(start, end, TILE):
        blocks, offsets = tile_pages(table_row, tile_start, num_pages, PAGE_SIZE, TILE, PAGES, SUB)
        tokens = tile_start + tl.arange(0, TILE)
        tok_mask = tokens < end
        kv_mask = tok_mask[:, None] & dim_mask[None, :]
        k_rows = blocks * stride_kb + offsets * stride_kt + kv_head * stride_kh
        k = tl.load(k_cache_ptr + k_rows[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        scores = tile_dot(q, tl.trans(tile_operand(k, q.dtype, IS_INT8)), UPCAST_DOT, DOT_PRECISION)
        if IS_INT8:
            k_scale = tl.load(k_scale_ptr + blocks * stride_ksb + offsets * stride_kst + kv_head * stride_ksh,
                              mask=tok_mask, other=0.0).to(tl.float32)
            scores = scores * k_scale[None, :]
        scores = tl.where(tok_mask[None, :], scores * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v_rows = blocks * stride_vb + offsets * stride_vt + kv_head * stride_vh
        v = tl.load(v_cache_ptr + v_rows[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        if IS_INT8:
            v_scale = tl.load(v_scale_ptr + blocks * stride_vsb + offsets * stride_vst + kv_head * stride_vsh,
                              mask=tok_mask, other=0.0).to(tl.float32)
            p = p * v_scale[None, :]
        acc = acc * alpha[:, None] + tile_dot(p.to(q.dtype), tile_operand(v, q.dtype, IS_INT8), UPCAST_DOT,
                                             DOT_PRECISION)
        m_i = m_new

    has_keys = l_i > 0.0
    result = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    out_mask = row_mask[:, None] & dim_mask[None, :]
    if NUM_SPLITS == 1:
        tl.store(out_ptr + seq * stride_os + heads[:, None] * stride_oh + dims[None, :],
                 result.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        base = seq * stride_ps + heads * stride_ph + split * stride_pk
        tl.store(part_out_ptr + base[:, None] + dims[None, :], result, mask=out_mask)
        tl.store(part_lse_ptr + seq * stride_ls + heads * stride_lh + split, lse, mask=row_mask)


@triton.jit
def _merge_splits_kernel(
    part_out_ptr, part_lse_ptr, out_ptr,
    stride_ps, stride_ph, stride_pk, stride_ls, stride_lh, stride_os, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Log-sum-exp merge (base 2) of the per-split partial outputs of one (sequence, head)."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, BLOCK_S)
    dims = tl.arange(0, BLOCK_D)
    split_mask = splits < NUM_SPLITS
    lse = tl.load(part_lse_ptr + seq * stride_ls + head * stride_lh + splits, mask=split_mask,
                  other=float("-inf"))
    lse_max = tl.max(lse, axis=0)
    weights = tl.where(lse > float("-inf"), tl.exp2(lse - lse_max), 0.0)
    base = seq * stride_ps + head * stride_ph + splits * stride_pk
    parts = tl.load(part_out_ptr + base[:, None] + dims[None, :],
                    mask=(weights > 0.0)[:, None] & (dims < HEAD_DIM)[None, :], other=0.0)
    total = tl.sum(weights, axis=0)  # 0 only for a sequence with no keys at all: output 0, not NaN
    result = tl.sum(parts * weights[:, None], axis=0) / tl.where(total > 0.0, total, 1.0)
    tl.store(out_ptr + seq * stride_os + head * stride_oh + dims, result.to(out_ptr.dtype.element_ty),
             mask=dims < HEAD_DIM)
