"""The planned CPU attention (kernels.cpu_attention) against the torch reference on random paged inputs.

Caches are poisoned (NaN in every slot no sequence owns, block 0 included, which the tables' padding
points at), block tables are scattered with padding past each sequence's blocks, heads are grouped.
"""

from __future__ import annotations

import pytest
import torch

from kernels import cpu_attention, reference
from tests.kernels.conftest import assert_close

DTYPES = [torch.float32, torch.bfloat16]
# (query heads, KV heads, head dim, page size, [(cached context, new chunk) per sequence]): one-token
# chunks, chunks ending on and just past page boundaries, an empty chunk, a chunk with no context.
SHAPES = [
    (9, 3, 64, 16, [(0, 1), (0, 16), (15, 2), (16, 17), (5, 0), (62, 3)]),
    (4, 4, 32, 4, [(0, 5), (3, 1), (8, 8)]),
    (8, 1, 80, 32, [(31, 1), (0, 33)]),
]
CPU = torch.device("cpu")


def _starts(chunks: list[int]) -> torch.Tensor:
    starts = torch.zeros(len(chunks) + 1, dtype=torch.int32)
    starts[1:] = torch.tensor(chunks).cumsum(0)
    return starts


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"h{s[0]}kv{s[1]}d{s[2]}p{s[3]}")
def test_prefill_matches_reference(dtype, shape, paged_cache):
    heads, kv_heads, head_dim, page_size, parts = shape
    cache = paged_cache([c + n for c, n in parts], kv_heads, head_dim, page_size, dtype)
    starts = _starts([n for _, n in parts])
    q = torch.randn(int(starts[-1]), heads, head_dim).to(dtype)
    out = cpu_attention.paged_prefill_attention(q, cache.k_poisoned, cache.v_poisoned, cache.block_tables,
                                                starts, cache.seq_lens, head_dim ** -0.5)
    ref = reference.paged_prefill_attention(q, cache.k_clean, cache.v_clean, cache.block_tables, starts,
                                            cache.seq_lens, head_dim ** -0.5)
    assert_close(out, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"h{s[0]}kv{s[1]}d{s[2]}p{s[3]}")
def test_decode_matches_reference(dtype, shape, paged_cache):
    heads, kv_heads, head_dim, page_size, parts = shape
    cache = paged_cache([c + max(n, 1) for c, n in parts], kv_heads, head_dim, page_size, dtype)
    q = torch.randn(len(parts), heads, head_dim).to(dtype)
    out = cpu_attention.paged_decode_attention(q, cache.k_poisoned, cache.v_poisoned, cache.block_tables,
                                               cache.seq_lens, head_dim ** -0.5)
    ref = reference.paged_decode_attention(q, cache.k_clean, cache.v_clean, cache.block_tables,
                                           cache.seq_lens, head_dim ** -0.5)
    assert_close(out, ref, dtype)


def test_one_plan_serves_every_layer(paged_cache):
    """A step plans once; layers with other K/V in the same slots each match the reference."""
    chunks = [40, 2, 9]
    cache = paged_cache([40, 7, 33], 2, 16, 8, torch.float32)
    starts = _starts(chunks)
    plan = cpu_attention.plan_prefill(cache.block_tables, starts, cache.seq_lens, 8, 3)
    owned = ~torch.isnan(cache.k_poisoned).any(dim=-1)
    for _ in range(3):
        k, v = _fill(cache.k_poisoned, owned), _fill(cache.v_poisoned, owned)
        q = torch.randn(int(starts[-1]), 6, 16)
        out = cpu_attention.attend(q, k, v, plan, 0.25)
        ref = reference.paged_prefill_attention(q, k, v, cache.block_tables, starts, cache.seq_lens, 0.25)
        assert_close(out, ref, torch.float32)


def _fill(cache: torch.Tensor, owned: torch.Tensor) -> torch.Tensor:
    """New random values in the owned slots, NaN elsewhere."""
    out = torch.full_like(cache, float("nan"))
    out[owned] = torch.randn(int(owned.sum()), cache.shape[-1])
    return out


def test_padding_blocks_stay_inside_each_sequence(paged_cache):
    """Past a sequence's last block the plan points at its own first block, never at block 0."""
    cache = paged_cache([3, 20], 1, 8, 4, torch.float32)
    blocks = cpu_attention.key_blocks(cache.block_tables, cache.seq_lens, 4, 5)
    assert torch.equal(blocks[0, 1:], cache.block_tables[0, 0].long().expand(4))
    assert torch.equal(blocks[1], cache.block_tables[1, :5].long())
    assert bool((blocks != 0).all())

