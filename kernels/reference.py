"""Pure-torch reference kernels. Triton versions in this package take the same arguments.

Layouts (shared by every backend):
  k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]
  slot of a token:  block_id * block_size + offset (int64); a slot < 0 means "do not store"
  block_tables:     int32 [num_seqs, max_blocks_per_seq], padded with 0 past a sequence's blocks
  seq_lens:         int32 [num_seqs], K/V length of each sequence *including* the new tokens
  query_start_loc:  int32 [num_seqs + 1], prefix sums of new-token counts (the flattened batch)
New K/V are stored into the cache before attention runs, so attention reads everything it needs
through the block table: cached prefix, earlier chunks and the new tokens alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def store_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write key/value [num_tokens, num_kv_heads, head_dim] into their slots."""
    keep = slot_mapping >= 0
    if not bool(keep.all()):
        key, value, slot_mapping = key[keep], value[keep], slot_mapping[keep]
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    k_cache.view(num_slots, *k_cache.shape[2:]).index_copy_(0, slot_mapping, key.to(k_cache.dtype))
    v_cache.view(num_slots, *v_cache.shape[2:]).index_copy_(0, slot_mapping, value.to(v_cache.dtype))


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` cached tokens of one sequence: [length, num_kv_heads, head_dim]."""
    block_size = cache.shape[1]
    num = (length + block_size - 1) // block_size
    return cache[block_table[:num].long()].flatten(0, 1)[:length]


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """One query token per sequence. q: [num_seqs, num_heads, head_dim] -> same shape."""
    num_seqs, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    max_len = int(seq_lens.max())
    max_blocks = (max_len + block_size - 1) // block_size
    table = block_tables[:, :max_blocks].long()
    k = k_cache[table].flatten(1, 2)[:, :max_len]  # [S, L, kvh, d]
    v = v_cache[table].flatten(1, 2)[:, :max_len]
    group = num_heads // num_kv_heads
    qg = q.view(num_seqs, num_kv_heads, group, head_dim).float()
    scores = torch.einsum("skgd,slkd->skgl", qg, k.float()) * scale
    pad = torch.arange(max_len, device=q.device)[None, :] >= seq_lens[:, None].long()
    scores.masked_fill_(pad[:, None, None, :], float("-inf"))
    probs = scores.softmax(dim=-1)
    out = torch.einsum("skgl,slkd->skgd", probs, v.float())
    return out.reshape(num_seqs, num_heads, head_dim).to(q.dtype)


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                            seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """A chunk of new tokens per sequence, causal against cached context plus themselves.

    q: [num_tokens, num_heads, head_dim] (flattened batch) -> same shape.
    """
    out = torch.empty_like(q)
    num_heads = q.shape[1]
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    for i, seq_len in enumerate(lens):
        lo, hi = starts[i], starts[i + 1]
        if hi == lo:
            continue
        k = gather_kv(k_cache, block_tables[i], seq_len)
        v = gather_kv(v_cache, block_tables[i], seq_len)
        out[lo:hi] = _causal_attention(q[lo:hi], k, v, scale, num_heads)
    return out


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                      num_heads: int) -> torch.Tensor:
    """q: [n, h, d] are the last n positions of k/v: [L, kvh, d]."""
    n, length = q.shape[0], k.shape[0]
    group = num_heads // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    qpos = torch.arange(length - n, length, device=q.device)[:, None]
    mask = torch.arange(length, device=q.device)[None, :] <= qpos
    o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1).to(q.dtype),
                                       v.transpose(0, 1).to(q.dtype), attn_mask=mask, scale=scale)
    return o.transpose(0, 1)


# --- int8 KV cache -------------------------------------------------------------------------------
# Layout: k_cache/v_cache int8 [num_blocks, block_size, num_kv_heads, head_dim]; k_scales/v_scales
# float32 [num_blocks, block_size, num_kv_heads]: one symmetric scale per (slot, KV head), fixed when
# the token is stored, so a block never needs requantising as it fills. Stored value
# round_half_away(x / s) with s = amax(|x|) / 127 over head_dim (s = 1 for an all-zero row).
# Capacity per token and head: head_dim + 4 bytes against 2 * head_dim for bf16.

INT8_MAX = 127.0


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 over the last dim: (int8 values, float32 scales of shape x.shape[:-1])."""
    x = x.float()
    amax = x.abs().amax(dim=-1)
    scales = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    scaled = x / scales[..., None]
    rounded = torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)
    return rounded.clamp_(-INT8_MAX, INT8_MAX).to(torch.int8), scales


def dequantize_int8(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 values from int8 `values` and their per-row `scales`."""
    return values.float() * scales.float()[..., None]


def store_kv_int8(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  k_scales: torch.Tensor, v_scales: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Quantize key/value [num_tokens, num_kv_heads, head_dim] and write values and scales to their slots."""
    keep = slot_mapping >= 0
    if not bool(keep.all()):
        key, value, slot_mapping = key[keep], value[keep], slot_mapping[keep]
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    for x, cache, scales in ((key, k_cache, k_scales), (value, v_cache, v_scales)):
        values, row_scales = quantize_int8(x)
        cache.view(num_slots, *cache.shape[2:]).index_copy_(0, slot_mapping, values)
        scales.view(num_slots, scales.shape[2]).index_copy_(0, slot_mapping, row_scales.to(scales.dtype))


def _compact_int8(k_cache: torch.Tensor, v_cache: torch.Tensor, k_scales: torch.Tensor,
                  v_scales: torch.Tensor, block_tables: torch.Tensor, max_len: int):
    """Float32 copies of only the blocks the tables reference, and the tables renumbered to them."""
    block_size = k_cache.shape[1]
    width = min(block_tables.shape[1], (max_len + block_size - 1) // block_size)
    used, tables = torch.unique(block_tables[:, :width].long(), return_inverse=True)
    k = dequantize_int8(k_cache[used], k_scales[used])
    v = dequantize_int8(v_cache[used], v_scales[used])
    return k, v, tables.to(torch.int32)


def paged_decode_attention_int8(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                k_scales: torch.Tensor, v_scales: torch.Tensor, block_tables: torch.Tensor,
                                seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """`paged_decode_attention` over an int8 cache: dequantize the referenced blocks, then attend."""
    k, v, tables = _compact_int8(k_cache, v_cache, k_scales, v_scales, block_tables, int(seq_lens.max()))
    return paged_decode_attention(q, k, v, tables, seq_lens, scale)


def paged_prefill_attention_int8(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                 k_scales: torch.Tensor, v_scales: torch.Tensor, block_tables: torch.Tensor,
                                 query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                                 scale: float) -> torch.Tensor:
    """`paged_prefill_attention` over an int8 cache: dequantize the referenced blocks, then attend."""
    k, v, tables = _compact_int8(k_cache, v_cache, k_scales, v_scales, block_tables, int(seq_lens.max()))
    return paged_prefill_attention(q, k, v, tables, query_start_loc, seq_lens, scale)


# --- rotary embedding fused with the store --------------------------------------------------------
# cos_sin: float32 [max_positions, head_dim] = cat(cos, sin) of position * inv_freq (rotate-half RoPE,
# the HF Llama convention); the same products and cos/sin as computing them per call.


def rotary_cos_sin(inv_freq: torch.Tensor, max_positions: int) -> torch.Tensor:
    """The cos/sin table of `rotary_store_kv` for positions 0 .. max_positions - 1."""
    freqs = torch.arange(max_positions, device=inv_freq.device).float()[:, None] * inv_freq.float()[None, :]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    """x [num_tokens, heads, head_dim] rotated as HF Llama does (cos/sin cast to x's dtype first)."""
    half = x.shape[-1] // 2
    table = cos_sin[positions.long()]
    cos = torch.cat([table[:, :half], table[:, :half]], dim=-1).to(x.dtype)[:, None, :]
    sin = torch.cat([table[:, half:], table[:, half:]], dim=-1).to(x.dtype)[:, None, :]
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def rotary_store_kv(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, slot_mapping: torch.Tensor, positions: torch.Tensor,
                    cos_sin: torch.Tensor) -> torch.Tensor:
    """Rotate q in place (returned) and key by RoPE at `positions`, then store key/value."""
    q.copy_(apply_rotary(q, positions, cos_sin))
    store_kv(apply_rotary(key, positions, cos_sin), value, k_cache, v_cache, slot_mapping)
    return q


def rotary_store_kv_int8(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                         v_cache: torch.Tensor, k_scales: torch.Tensor, v_scales: torch.Tensor,
                         slot_mapping: torch.Tensor, positions: torch.Tensor,
                         cos_sin: torch.Tensor) -> torch.Tensor:
    """`rotary_store_kv` into an int8 cache (quantized after the rotation)."""
    q.copy_(apply_rotary(q, positions, cos_sin))
    store_kv_int8(apply_rotary(key, positions, cos_sin), value, k_cache, v_cache, k_scales, v_scales,
                  slot_mapping)
    return q
