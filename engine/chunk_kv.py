"""Chunk-level KV reuse for RAG prompts: a retrieved chunk's KV, computed once, reused at any position.

Prefix sharing stops at the first chunk that differs, and RAG prompts rarely repeat the same set of
chunks in the same order. A request may name token spans of its prompt as chunks (the RAG layer
marks each retrieved chunk's text). The first time a chunk is computed in an exact context (no reused
KV before it), its K/V are copied into blocks of their own, in the same pool and LRU as prefix blocks,
named by (salt, the chunk's token ids); the positions they were computed at are kept with them.

A later request that holds the same chunk at another position takes that KV instead of computing it:
V as stored, K rotated by the position delta (RoPE rotations compose, so rotating a key computed at
position p by d gives the key at p + d, up to fp32 rounding). The chunk's first `recompute` tokens
are computed again in the new context, so the chunk is stitched to what precedes it (the idea of
EPIC's LegoLink); the question and everything not in a reused chunk is computed as usual. The rest
of the chunk keeps the attention it had where it was stored: that is the approximation, measured in
docs/benchmarks.md, and why reuse is opt-in per request (`kv_reuse="chunks"`).

The scheduler keeps a sequence's progress a single frontier. A step covers positions from the
frontier on: the reused regions among them are copied in (`KVMove`s, before the forward pass) and
the runs of tokens between them are computed in the same pass, each run an attention row of its
own over the sequence's blocks, so a prompt of several chunks is prefilled in one step, not one
step per chunk. A chunk finished in an exact context is saved (a `KVSave`, after the forward pass).
Blocks holding reused KV are never named as prefix blocks: a prefix hit stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.model import apply_rotary
from engine.sampling_params import InvalidRequestError

KV_REUSE_MODES = ("prefix", "chunks")


@dataclass(slots=True, frozen=True)
class ChunkSpec:
    """A request's retrieved chunks: prompt token spans [start, end), whether to reuse stored KV for
    them ("chunks") or only exact prefixes ("prefix"), and whether they may be shared across salts
    (a public collection)."""

    spans: tuple[tuple[int, int], ...] = ()
    kv_reuse: str = "prefix"
    public: bool = False
    namespace: str | None = None  # the chunks' salt when not the request's (a precompute runs its
    # prompts under a salt of their own, so their prefix blocks can be dropped while the chunks stay)

    def check(self, num_prompt_tokens: int, can_reuse: bool) -> None:
        """Raise InvalidRequestError unless the spans are ordered, disjoint, and leave the prompt's
        last token (whose logits are sampled) outside every chunk."""
        if self.kv_reuse not in KV_REUSE_MODES:
            raise InvalidRequestError(f"kv_reuse must be one of {', '.join(KV_REUSE_MODES)}, "
                                      f"got {self.kv_reuse!r}", "kv_reuse")
        if self.kv_reuse == "chunks" and not can_reuse:
            raise InvalidRequestError("kv_reuse 'chunks' needs a float KV cache (this engine stores "
                                      "K/V as int8)", "kv_reuse")
        previous_end = 0
        for start, end in self.spans:
            if not (previous_end <= start < end <= num_prompt_tokens - 1):
                raise InvalidRequestError(
                    f"chunk spans must be ordered, disjoint, non-empty and end before the prompt's last "
                    f"token ({num_prompt_tokens - 1}); got {list(self.spans)}", "chunk_spans")
            previous_end = end


@dataclass(slots=True, frozen=True)
class ChunkEntry:
    """A stored chunk: its blocks (with their generations when named) and where it was computed."""

    block_ids: tuple[int, ...]
    generations: tuple[int, ...]
    base_position: int  # the position of the chunk's first token when its KV was computed
    num_tokens: int


@dataclass(slots=True)
class ReuseRegion:
    """Prompt positions [start, end) of a sequence served from a stored chunk (held until moved)."""

    start: int
    end: int
    entry: ChunkEntry
    offset: int  # the chunk token at `start` (the recomputed head comes before it)
    num_recomputed: int  # of the head, tokens computed again (the rest of it was a prefix hit)


@dataclass(slots=True, frozen=True)
class KVMove:
    """Copy a stored chunk's tokens [offset, offset + num_tokens) to a sequence's positions from
    dst_start, rotating K by delta = dst_start - (base_position + offset)."""

    src_blocks: tuple[int, ...]
    offset: int
    dst_start: int
    num_tokens: int
    delta: int


@dataclass(slots=True, frozen=True)
class KVSave:
    """Copy a sequence's positions [src_start, src_start + num_tokens) into a chunk's blocks."""

    dst_blocks: tuple[int, ...]
    src_start: int
    num_tokens: int


@dataclass(slots=True)
class ChunkOps:
    """One sequence's chunk work in a step: tokens taken from stored chunks, and chunks to save.

    The step covers the sequence's next num_reused + n positions from its frontier: the moves'
    destinations, and n computed tokens around them (runs of them between chunks: `segments`)."""

    num_reused: int = 0  # tokens of the step's positions whose KV is moved in, not computed
    moves: list[KVMove] = field(default_factory=list)
    saves: list[KVSave] = field(default_factory=list)

    def segments(self, frontier: int, num_computed: int) -> list[tuple[int, int]]:
        """(start, length) of each run of computed positions, in order."""
        out, pos = [], frontier
        end = frontier + self.num_reused + num_computed
        for move in sorted(self.moves, key=lambda m: m.dst_start):
            if move.dst_start > pos:
                out.append((pos, move.dst_start - pos))
            pos = move.dst_start + move.num_tokens
        if end > pos:
            out.append((pos, end - pos))
        assert sum(n for _, n in out) == num_computed, "moves must lie within the step's positions"
        return out


def slots_of(blocks: tuple[int, ...] | list[int], start: int, num_tokens: int, block_size: int,
             device: torch.device) -> torch.Tensor:
    """Flat cache slots of positions [start, start + num_tokens) of a block table."""
    positions = torch.arange(start, start + num_tokens)
    table = torch.tensor(blocks, dtype=torch.long)
    return (table[positions // block_size] * block_size + positions % block_size).to(device)


def rotate_keys(k: torch.Tensor, delta: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """Keys [tokens, heads, head_dim] already rotated at some positions, rotated further by `delta`
    positions (rotate-half RoPE, in fp32 like the model's table)."""
    if delta == 0:
        return k
    angles = float(delta) * inv_freq.float()
    cos, sin = angles.cos(), angles.sin()
    cos2, sin2 = torch.cat([cos, cos])[None, None, :], torch.cat([-sin, sin])[None, None, :]
    return apply_rotary(k.float(), cos2, sin2).to(k.dtype)


def apply_moves(kv_caches: list[tuple[torch.Tensor, ...]], table: list[int], moves: list[KVMove],
                block_size: int, inv_freq: torch.Tensor) -> None:
    """Copy stored chunks into a sequence's slots (every layer), K re-rotated to its new positions."""
    for move in moves:
        device = kv_caches[0][0].device
        src = slots_of(move.src_blocks, move.offset, move.num_tokens, block_size, device)
        dst = slots_of(table, move.dst_start, move.num_tokens, block_size, device)
        for k_cache, v_cache in kv_caches:
            k_flat, v_flat = k_cache.view(-1, *k_cache.shape[2:]), v_cache.view(-1, *v_cache.shape[2:])
            k_flat[dst] = rotate_keys(k_flat[src], move.delta, inv_freq)
            v_flat[dst] = v_flat[src]


def apply_saves(kv_caches: list[tuple[torch.Tensor, ...]], table: list[int], saves: list[KVSave],
                block_size: int) -> None:
    """Copy a sequence's freshly computed chunk KV into the chunk's own blocks (every layer)."""
    for save in saves:
        device = kv_caches[0][0].device
        src = slots_of(table, save.src_start, save.num_tokens, block_size, device)
        dst = slots_of(save.dst_blocks, 0, save.num_tokens, block_size, device)
        for k_cache, v_cache in kv_caches:
            k_flat, v_flat = k_cache.view(-1, *k_cache.shape[2:]), v_cache.view(-1, *v_cache.shape[2:])
            k_flat[dst] = k_flat[src]
            v_flat[dst] = v_flat[src]
