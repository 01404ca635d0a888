"""Triton paged decode attention against the torch reference (CPU interpreter in CI)."""

from __future__ import annotations

import pytest
import torch

from kernels import decode, reference

DTYPES = [torch.float32, torch.bfloat16]
# (query heads, KV heads, head dim, page size, sequence lengths): SmolLM2's 9/3 heads, plain MHA, MQA
# with a head dim that is not a power of two; lengths of 1 token and on/around page boundaries.
SHAPES = [
    (9, 3, 64, 16, [1, 16, 17, 33]),
    (4, 4, 32, 4, [3, 4, 5, 40]),
    (8, 1, 80, 32, [31, 32, 65]),
]


def _nan_like(x: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x, float("nan"))


@pytest.fixture
def poisoned_workspace(monkeypatch):
    """Split partials start as NaN, so a merge that reads a partial no split wrote shows up."""
    real = decode.split_workspace
    monkeypatch.setattr(decode, "split_workspace", lambda *args: tuple(_nan_like(t) for t in real(*args)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"h{s[0]}kv{s[1]}d{s[2]}p{s[3]}")
@pytest.mark.parametrize("num_splits", [None, 1, 3, 64])
def test_decode_matches_reference(dtype, shape, num_splits, device, paged_cache, close, poisoned_workspace):
    heads, kv_heads, head_dim, page_size, lens = shape
    cache = paged_cache(lens, kv_heads, head_dim, page_size, dtype)
    q = torch.randn(len(lens), heads, head_dim, device=device).to(dtype)
    scale = head_dim ** -0.5
    out = decode.decode_attention(q, cache.k_poisoned, cache.v_poisoned, cache.block_tables, cache.seq_lens,
                                  scale, num_splits=num_splits, out=_nan_like(q))
    ref = reference.paged_decode_attention(q, cache.k_clean, cache.v_clean, cache.block_tables,
                                           cache.seq_lens, scale)
    close(out, ref, dtype)


def test_decode_entry_point_has_reference_signature(device, paged_cache, close):
    cache = paged_cache([7, 130], 2, 16, 8, torch.float32)
    q = torch.randn(2, 6, 16, device=device)
    out = decode.paged_decode_attention(q, cache.k_poisoned, cache.v_poisoned, cache.block_tables,
                                        cache.seq_lens, 0.3)
    ref = reference.paged_decode_attention(q, cache.k_clean, cache.v_clean, cache.block_tables,
                                           cache.seq_lens, 0.3)
    close(out, ref, torch.float32)


@pytest.mark.parametrize(("num_seqs", "bound", "page_size", "forced"), [
    (1, 16384, 16, None), (256, 16384, 16, None), (1, 16, 16, None), (3, 100, 4, None),
    (2, 1000, 16, 7), (2, 40, 32, 64),
])
def test_plan_covers_every_token_without_empty_splits(num_seqs, bound, page_size, forced):
    plan = decode.plan_decode(num_seqs, 8, bound, page_size, torch.device("cpu"), forced)
    assert plan.split_len % plan.tile == 0
    assert plan.num_splits * plan.split_len >= bound > (plan.num_splits - 1) * plan.split_len
    if forced is not None:
        assert plan.num_splits <= forced


def test_plan_splits_only_long_contexts_of_small_batches():
    cpu = torch.device("cpu")
    assert decode.plan_decode(1, 1, 16384, 16, cpu).num_splits > 1
    assert decode.plan_decode(256, 8, 16384, 16, cpu).num_splits == 1
    assert decode.plan_decode(1, 1, 64, 16, cpu).num_splits == 1
