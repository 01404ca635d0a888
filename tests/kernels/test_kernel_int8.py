"""Triton attention over the int8 KV cache against the int8 torch reference (CPU interpreter in CI)."""

from __future__ import annotations

import pytest
import torch

from kernels import decode, prefill, reference

DTYPES = [torch.float32, torch.bfloat16]
SHAPES = [(9, 3, 64, 16), (8, 2, 48, 8)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"h{s[0]}kv{s[1]}d{s[2]}p{s[3]}")
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_int8_matches_reference(dtype, shape, num_splits, device, paged_cache, int8_cache, close):
    heads, kv_heads, head_dim, page_size = shape
    cache = int8_cache(paged_cache([1, page_size, 2 * page_size + 1, 50], kv_heads, head_dim, page_size,
                                   torch.float32))
    tables, lens = cache.block_tables, cache.seq_lens
    q = torch.randn(4, heads, head_dim, device=device).to(dtype)
    (k, ks), (v, vs) = cache.k_poisoned, cache.v_poisoned
    out = decode.decode_attention(q, k, v, tables, lens, 0.1, scales=(ks, vs), num_splits=num_splits,
                                  out=torch.full_like(q, float("nan")))
    (k, ks), (v, vs) = cache.k_clean, cache.v_clean
    ref = reference.paged_decode_attention_int8(q, k, v, ks, vs, tables, lens, 0.1)
    close(out, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"h{s[0]}kv{s[1]}d{s[2]}p{s[3]}")
def test_prefill_int8_matches_reference(dtype, shape, device, paged_cache, int8_cache, close):
    heads, kv_heads, head_dim, page_size = shape
    parts = [(0, 1), (page_size - 1, 2), (page_size, page_size + 1)]
    cache = int8_cache(paged_cache([c + n for c, n in parts], kv_heads, head_dim, page_size, torch.float32))
    starts = torch.tensor([0, 1, 3, 4 + page_size], dtype=torch.int32, device=device)
    q = torch.randn(int(starts[-1]), heads, head_dim, device=device).to(dtype)
    (k, ks), (v, vs) = cache.k_poisoned, cache.v_poisoned
    out = prefill.paged_prefill_attention_int8(q, k, v, ks, vs, cache.block_tables, starts, cache.seq_lens,
                                               0.1)
    (k, ks), (v, vs) = cache.k_clean, cache.v_clean
    ref = reference.paged_prefill_attention_int8(q, k, v, ks, vs, cache.block_tables, starts, cache.seq_lens,
                                                 0.1)
    close(out, ref, dtype)


def test_int8_cache_error_stays_near_bf16_cache_error(paged_cache, int8_cache):
    """Reference numerics: int8 (per-slot scales) vs a bf16 cache, both against the fp32 cache."""
    cache = paged_cache([64, 200, 333], 4, 64, 16, torch.float32)
    quantized = int8_cache(cache)
    q = torch.randn(3, 16, 64)
    args = (cache.block_tables, cache.seq_lens, 0.125)
    truth = reference.paged_decode_attention(q, cache.k_clean, cache.v_clean, *args)
    bf16 = reference.paged_decode_attention(q, cache.k_clean.bfloat16(), cache.v_clean.bfloat16(), *args)
    (k, ks), (v, vs) = quantized.k_clean, quantized.v_clean
    int8 = reference.paged_decode_attention_int8(q, k, v, ks, vs, *args)
    scale = truth.abs().max()
    bf16_error = float((bf16 - truth).abs().max() / scale)
    int8_error = float((int8 - truth).abs().max() / scale)
    # Over 2,000 seeds the worst was 7.6e-3 (bf16) and 2.6e-2 (int8); the old bounds, 5e-3 and 2e-2,
    # failed 10 seeds in 400 (the inputs are fresh each run: fresh_seed).
    assert 0 < bf16_error < 1.5e-2
    assert 0 < int8_error < 5e-2
