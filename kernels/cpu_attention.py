"""Paged attention in plain torch, shaped for CPUs: one gather plan per step, shared by every layer.

The reference (kernels.reference) gathers each sequence's blocks in every layer, pads every decode
sequence to the longest, and runs prefill one sequence at a time with K/V repeated per query head.
Here the block tables are turned once per step into a plan: the
blocks each sequence can see, the key rows past its length, and an additive mask. Each layer then
costs one index_select of K and of V (whole blocks: 4x faster than slot by slot in a micro-benchmark
of 48 sequences) and one `scaled_dot_product_attention` for all the plan's sequences together
(engine.attention plans a step's decodes together and each prefill chunk alone, so unequal chunks
are not padded to the longest). Grouped-query attention folds the query heads that share a KV head
into the query axis, so K/V are never repeated.

Padding blocks are the sequence's own first block (never a block it does not own). Every gathered
key row past a sequence's length is zeroed before use: its slot may hold anything, NaN included (a
block's unwritten tail, a freed block's old contents), and NaN times a zero weight is still NaN.
Those rows are masked out; padding query rows see key 0 only and are dropped. Same arguments and
layouts as kernels.reference (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class AttentionPlan:
    """Where each sequence's keys live in the cache and which of them each query may see.

    blocks: int64 [num_seqs * max_len / block_size], the cache blocks of each sequence in order.
    pad_rows: int64, the rows of the gathered [num_seqs * max_len] keys past each sequence's length.
    mask: [num_seqs, 1, group * max_query, max_len], 0 where visible and -inf elsewhere, in the queries' dtype
      (rows ordered by (query head within its group, query)).
    query_rows: int64 [num_tokens], the row of each flattened query in [num_seqs * max_query]; None
      for decode (one query per sequence, already in order).
    """

    blocks: torch.Tensor
    pad_rows: torch.Tensor
    mask: torch.Tensor
    num_seqs: int
    max_len: int
    max_query: int
    query_rows: torch.Tensor | None


def key_blocks(block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int,
               num_blocks: int) -> torch.Tensor:
    """int64 [num_seqs, num_blocks]: each sequence's blocks; past its last, its first block again."""
    blocks = block_tables[:, :num_blocks].long()
    used = (seq_lens.long() + block_size - 1) // block_size
    beyond = torch.arange(num_blocks, device=blocks.device)[None, :] >= used[:, None]
    return torch.where(beyond, blocks[:, :1], blocks)


def _gather_plan(block_tables: torch.Tensor, lens: torch.Tensor,
                 block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The blocks to gather, the padding key rows, the [num_seqs, max_len] 'hidden' map, max_len."""
    num_blocks = max((int(lens.max()) + block_size - 1) // block_size, 1) if lens.numel() else 1
    max_len = num_blocks * block_size
    blocks = key_blocks(block_tables, lens, block_size, num_blocks)
    hidden = torch.arange(max_len, device=lens.device)[None, :] >= lens[:, None]
    return blocks.flatten(), hidden.flatten().nonzero().squeeze(1), hidden, max_len


def plan_decode(block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int, group: int,
                dtype: torch.dtype = torch.float32) -> AttentionPlan:
    """One query per sequence at its last position: it sees keys 0 .. seq_len - 1."""
    num_seqs = int(seq_lens.shape[0])
    blocks, pad_rows, hidden, max_len = _gather_plan(block_tables, seq_lens.long(), block_size)
    mask = torch.zeros(num_seqs, 1, group, max_len, dtype=dtype, device=seq_lens.device)
    mask.masked_fill_(hidden[:, None, None, :], float("-inf"))
    return AttentionPlan(blocks, pad_rows, mask, num_seqs, max_len, 1, None)


def plan_prefill(block_tables: torch.Tensor, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                 block_size: int, group: int, dtype: torch.dtype = torch.float32) -> AttentionPlan:
    """A chunk of new tokens per sequence, each causal against the cached context and the chunk."""
    dev = seq_lens.device
    num_seqs = int(seq_lens.shape[0])
    counts = (query_start_loc[1:] - query_start_loc[:-1]).long()
    lens = seq_lens.long()
    max_query = max(int(counts.max()), 1)
    blocks, pad_rows, _, max_len = _gather_plan(block_tables, lens, block_size)
    seq_of_token = torch.repeat_interleave(torch.arange(num_seqs, device=dev), counts)
    token_in_seq = torch.arange(int(counts.sum()), device=dev) - query_start_loc[:-1].long()[seq_of_token]
    query_rows = seq_of_token * max_query + token_in_seq
    # Query i of a sequence sits at position seq_len - count + i; padding rows see key 0 only.
    qpos = lens[:, None] - counts[:, None] + torch.arange(max_query, device=dev)[None, :]
    qpos = torch.where(torch.arange(max_query, device=dev)[None, :] < counts[:, None], qpos, 0)
    visible = torch.arange(max_len, device=dev)[None, None, :] <= qpos[:, :, None]
    mask = torch.zeros(num_seqs, max_query, max_len, dtype=dtype, device=dev)
    mask.masked_fill_(~visible, float("-inf"))
    mask = mask[:, None].expand(num_seqs, group, max_query, max_len).reshape(num_seqs, 1, -1, max_len)
    return AttentionPlan(blocks, pad_rows, mask, num_seqs, max_len, max_query, query_rows)


def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: AttentionPlan,
           scale: float) -> torch.Tensor:
    """q: [num_tokens, num_heads, head_dim] -> the same shape, attending as `plan` says."""
    num_tokens, num_heads, head_dim = q.shape
    kv_heads = k_cache.shape[2]
    group = num_heads // kv_heads
    s, length, m = plan.num_seqs, plan.max_len, plan.max_query
    k = _gather(k_cache, plan).view(s, length, kv_heads, head_dim)
    v = _gather(v_cache, plan).view(s, length, kv_heads, head_dim)
    if plan.query_rows is not None:
        padded = q.new_zeros(s * m, num_heads, head_dim).index_copy_(0, plan.query_rows, q)
        q = padded.view(s, m, kv_heads, group, head_dim).permute(0, 2, 3, 1, 4)
    q = q.reshape(s, kv_heads, group * m, head_dim)
    mask = plan.mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k.transpose(1, 2).to(q.dtype), v.transpose(1, 2).to(q.dtype),
                                         attn_mask=mask, scale=scale)
    if plan.query_rows is None:
        return out.reshape(num_tokens, num_heads, head_dim)
    out = out.view(s, kv_heads, group, m, head_dim).permute(0, 3, 1, 2, 4).reshape(s * m, num_heads, head_dim)
    return out.index_select(0, plan.query_rows)


def _gather(cache: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
    """The plan's blocks as [num_seqs * max_len, kv_heads, head_dim] rows, padding rows zeroed."""
    rows = cache.index_select(0, plan.blocks).flatten(0, 1)
    return rows.index_fill_(0, plan.pad_rows, 0) if plan.pad_rows.numel() else rows


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """`kernels.reference.paged_decode_attention`, planned for this call alone."""
    plan = plan_decode(block_tables, seq_lens, k_cache.shape[1], q.shape[1] // k_cache.shape[2], q.dtype)
    return attend(q, k_cache, v_cache, plan, scale)


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                            seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """`kernels.reference.paged_prefill_attention`, planned for this call alone."""
    plan = plan_prefill(block_tables, query_start_loc, seq_lens, k_cache.shape[1],
                        q.shape[1] // k_cache.shape[2], q.dtype)
    return attend(q, k_cache, v_cache, plan, scale)
