"""The C++ paged decode kernel (kernels.cpu_decode) against the torch reference on random paged inputs.

Poisoned caches (NaN in every slot no sequence owns), scattered block tables with padding, grouped
heads, fp32/bf16/fp16; one sequence (a task per KV head) and many (a task per sequence).
"""

from __future__ import annotations

import pytest
import torch

from engine.attention import AttentionMetadata, TorchBackend, get_backend, paged_attention
from kernels import cpu_decode, cpu_native, reference
from tests.kernels.conftest import assert_close

pytestmark = pytest.mark.skipif(not cpu_native.available(), reason="no C++ toolchain to build the kernel")

# (query heads, KV heads, head dim, page size, context lengths)
SHAPES = [
    (9, 3, 64, 16, [1, 16, 17, 300, 5, 65]),
    (4, 4, 32, 4, [5, 3]),
    (8, 1, 80, 32, [31]),  # one sequence: the kernel splits it by KV head (here one)
    (6, 2, 20, 8, [700]),  # head dim not a multiple of 8: the dot product's scalar tail
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"h{s[0]}kv{s[1]}d{s[2]}p{s[3]}n{len(s[4])}")
def test_decode_matches_reference(dtype, shape, paged_cache):
    heads, kv_heads, head_dim, page_size, lens = shape
    cache = paged_cache(lens, kv_heads, head_dim, page_size, dtype)
    q = torch.randn(len(lens), heads, head_dim).to(dtype)
    out = cpu_decode.paged_decode_attention(q, cache.k_poisoned, cache.v_poisoned, cache.block_tables,
                                            cache.seq_lens, head_dim ** -0.5)
    ref = reference.paged_decode_attention(q, cache.k_clean, cache.v_clean, cache.block_tables,
                                           cache.seq_lens, head_dim ** -0.5)
    assert_close(out, ref, dtype)


def test_cpu_auto_backend_decodes_natively_and_plans_only_prefill(paged_cache):
    backend = get_backend(torch.device("cpu"))
    assert isinstance(backend, TorchBackend) and not backend.plans_decode
    assert get_backend(torch.device("cpu"), "torch").plans_decode  # plain torch plans both
    cache = paged_cache([40, 7, 33], 3, 16, 8, torch.float32)
    tables, lens = cache.block_tables, cache.seq_lens
    meta = AttentionMetadata(slot_mapping=torch.empty(0, dtype=torch.long), num_decode_tokens=2,
                             decode_block_tables=tables[:2], decode_seq_lens=lens[:2],
                             prefill_block_tables=tables[2:], prefill_seq_lens=lens[2:],
                             prefill_query_start_loc=torch.tensor([0, 5], dtype=torch.int32))
    meta.plan(8, 2, torch.float32, decodes=backend.plans_decode)
    assert meta.decode_plan is None and meta.prefill_plans is not None
    q = torch.randn(7, 6, 16)
    empty = torch.empty(0, 3, 16)
    kv = (cache.k_poisoned, cache.v_poisoned)
    out = paged_attention(backend, q, empty, empty, kv, meta, 0.25)
    head = reference.paged_decode_attention(q[:2], cache.k_clean, cache.v_clean, tables[:2], lens[:2], 0.25)
    tail = reference.paged_prefill_attention(q[2:], cache.k_clean, cache.v_clean, tables[2:],
                                             torch.tensor([0, 5], dtype=torch.int32), lens[2:], 0.25)
    assert_close(out, torch.cat([head, tail]), torch.float32)
