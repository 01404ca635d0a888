"""Triton paged prefill attention against the torch reference (CPU interpreter in CI)."""

from __future__ import annotations

import pytest
import torch

from kernels import prefill, reference

DTYPES = [torch.float32, torch.bfloat16]
# (query heads, KV heads, head dim, page size, K/V tile, [(cached context, new chunk) per sequence]):
# 1-token chunks, chunks ending on and just past page boundaries, an empty chunk, a chunk with no
# context; tiles spanning several pages and part of one.
SHAPES = [
    (9, 3, 64, 16, 64, [(0, 1), (0, 16), (15, 2), (16, 17), (5, 0), (62, 3)]),
    (4, 4, 32, 4, 16, [(0, 5), (3, 1), (8, 8)]),
    (8, 1, 80, 32, 16, [(31, 1), (0, 33)]),
]


def _query_start_loc(chunks: list[int], device: torch.device) -> torch.Tensor:
    starts = torch.zeros(len(chunks) + 1, dtype=torch.int32)
    starts[1:] = torch.tensor(chunks).cumsum(0)
    return starts.to(device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"h{s[0]}kv{s[1]}d{s[2]}p{s[3]}t{s[4]}")
@pytest.mark.parametrize("block_m", [16, 64])
def test_prefill_matches_reference(dtype, shape, block_m, device, paged_cache, close):
    heads, kv_heads, head_dim, page_size, tile, parts = shape
    cache = paged_cache([c + n for c, n in parts], kv_heads, head_dim, page_size, dtype)
    starts = _query_start_loc([n for _, n in parts], device)
    q = torch.randn(int(starts[-1]), heads, head_dim, device=device).to(dtype)
    scale = head_dim ** -0.5
    out = prefill.prefill_attention(q, cache.k_poisoned, cache.v_poisoned, cache.block_tables, starts,
                                    cache.seq_lens, scale, out=torch.full_like(q, float("nan")),
                                    block_m=block_m, tile=tile)
    ref = reference.paged_prefill_attention(q, cache.k_clean, cache.v_clean, cache.block_tables, starts,
                                            cache.seq_lens, scale)
    close(out, ref, dtype)


def test_prefill_entry_point_has_reference_signature(device, paged_cache, close):
    cache = paged_cache([40, 9], 2, 16, 8, torch.float32)
    starts = _query_start_loc([21, 9], device)
    q = torch.randn(30, 4, 16, device=device)
    out = prefill.paged_prefill_attention(q, cache.k_poisoned, cache.v_poisoned, cache.block_tables,
                                          starts, cache.seq_lens, 0.2)
    ref = reference.paged_prefill_attention(q, cache.k_clean, cache.v_clean, cache.block_tables, starts,
                                            cache.seq_lens, 0.2)
    close(out, ref, torch.float32)


def test_prefill_of_a_strided_query_view(device, paged_cache, close):
    """The engine hands the prefill tail of the step as a slice of a bigger q."""
    cache = paged_cache([12, 20], 3, 32, 16, torch.float32)
    starts = _query_start_loc([12, 4], device)
    whole = torch.randn(19, 6, 32, device=device)
    q = whole[3:]
    out = prefill.paged_prefill_attention(q, cache.k_poisoned, cache.v_poisoned, cache.block_tables,
                                          starts, cache.seq_lens, 0.25)
    ref = reference.paged_prefill_attention(q.clone(), cache.k_clean, cache.v_clean, cache.block_tables,
                                            starts, cache.seq_lens, 0.25)
    close(out, ref, torch.float32)
