"""Triton paged decode attention against the torch reference (CPU interpreter in CI)."""

from __future__ import annotations

import pytest
import torch

from kernels import decode, reference

DTYPES = [torch.float32, torch.bfloat16]
# (query heads, KV heads, head dim, page size, K/V tile, sequence lengths): SmolLM2's 9/3 heads, plain
# MHA, MQA with a head dim that is not a power of two; tiles spanning 4 pages and a quarter page;
# lengths of 1 token and on/around page and tile boundaries.
SHAPES = [
    (9, 3, 64, 16, 64, [1, 16, 17, 64, 65]),
    (4, 4, 32, 4, 16, [3, 4, 5, 40]),
    (8, 1, 80, 64, 16, [31, 32, 64, 65]),
]


def _nan_like(x: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x, float("nan"))


@pytest.fixture
def poisoned_workspace(monkeypatch):
    """Split partials start as NaN, so a merge that reads a partial no split wrote shows up."""
    real = decode.split_workspace
    monkeypatch.setattr(decode, "split_workspace", lambda *args: tuple(_nan_like(t) for t in real(*args)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"h{s[0]}kv{s[1]}d{s[2]}p{s[3]}t{s[4]}")
@pytest.mark.parametrize("num_splits", [1, 3, 64])  # planned splits: the entry-point test below
def test_decode_matches_reference(dtype, shape, num_splits, device, paged_cache, close, poisoned_workspace):
    heads, kv_heads, head_dim, page_size, tile, lens = shape
    cache = paged_cache(lens, kv_heads, head_dim, page_size, dtype)
    q = torch.randn(len(lens), heads, head_dim, device=device).to(dtype)
    scale = head_dim ** -0.5
    out = decode.decode_attention(q, cache.k_poisoned, cache.v_poisoned, cache.block_tables, cache.seq_lens,
                                  scale, num_splits=num_splits, tile=tile, out=_nan_like(q))
    ref = reference.paged_decode_attention(q, cache.k_clean, cache.v_clean, cache.block_tables,
                                           cache.seq_lens, scale)
    close(out, ref, dtype)


def test_decode_entry_point_has_reference_signature(device, paged_cache, close):
    """Also the planned split count: here more than one split, merged."""
    cache = paged_cache([7, 600], 2, 16, 8, torch.float32)
    bound = cache.block_tables.shape[1] * 8
    assert decode.plan_decode(2, 2, bound, torch.device(device)).num_splits > 1
    q = torch.randn(2, 6, 16, device=device)
    out = decode.paged_decode_attention(q, cache.k_poisoned, cache.v_poisoned, cache.block_tables,
                                        cache.seq_lens, 0.3)
    ref = reference.paged_decode_attention(q, cache.k_clean, cache.v_clean, cache.block_tables,
                                           cache.seq_lens, 0.3)
    close(out, ref, torch.float32)


@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_of_a_sequence_without_keys_is_zero(num_splits, device, paged_cache):
    """A length-0 row (the reference's softmax gives NaN there) yields zeros, not NaN."""
    cache = paged_cache([70, 5], 2, 16, 8, torch.float32)
    lens = torch.tensor([70, 0], dtype=torch.int32, device=device)
    q = torch.randn(2, 4, 16, device=device)
    out = decode.decode_attention(q, cache.k_poisoned, cache.v_poisoned, cache.block_tables, lens, 0.25,
                                  num_splits=num_splits, out=_nan_like(q))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert bool(torch.isfinite(out[0]).all())


@pytest.mark.parametrize(("num_seqs", "bound", "tile", "forced"), [
    (1, 16384, 64, None), (256, 16384, 64, None), (1, 16, 64, None), (3, 100, 16, None),
    (2, 1000, 64, 7), (2, 40, 16, 64),
])
def test_plan_covers_every_token_without_empty_splits(num_seqs, bound, tile, forced):
    plan = decode.plan_decode(num_seqs, 8, bound, torch.device("cpu"), forced, tile)
    assert plan.tile == tile and plan.split_len % tile == 0
    assert plan.num_splits * plan.split_len >= bound > (plan.num_splits - 1) * plan.split_len
    if forced is not None:
        assert plan.num_splits <= forced


def test_plan_splits_only_long_contexts_of_small_batches():
    cpu = torch.device("cpu")
    assert decode.plan_decode(1, 1, 16384, cpu).num_splits > 1
    assert decode.plan_decode(256, 8, 16384, cpu).num_splits == 1
    assert decode.plan_decode(1, 1, 64, cpu).num_splits == 1


def test_page_size_must_be_a_power_of_two(device):
    k = torch.zeros(2, 12, 1, 16, device=device)
    args = (torch.zeros(1, 1, 16, device=device), k, k, torch.zeros(1, 1, dtype=torch.int32, device=device),
            torch.ones(1, dtype=torch.int32, device=device), 1.0)
    with pytest.raises(ValueError, match="power-of-two page"):
        decode.paged_decode_attention(*args)
