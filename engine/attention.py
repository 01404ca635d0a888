"""Attention behind one interface: the step's metadata plus a backend that stores K/V and attends.

A step's flattened batch puts decode tokens (one per sequence) first and prefill chunks after, so
each backend can use a batched decode kernel on the head and a varlen prefill kernel on the tail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from kernels import reference


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # int64 [num_tokens]
    num_decode_tokens: int  # the first num_decode_tokens tokens are decodes, one per sequence
    decode_block_tables: torch.Tensor  # int32 [num_decodes, max_blocks]
    decode_seq_lens: torch.Tensor  # int32 [num_decodes]
    prefill_block_tables: torch.Tensor  # int32 [num_prefills, max_blocks]
    prefill_query_start_loc: torch.Tensor  # int32 [num_prefills + 1], relative to the prefill tail
    prefill_seq_lens: torch.Tensor  # int32 [num_prefills]

    @property
    def num_prefills(self) -> int:
        return int(self.prefill_seq_lens.shape[0])


class AttentionBackend(Protocol):
    name: str

    def store_kv(self, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None: ...

    def decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor: ...

    def prefill(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                block_tables: torch.Tensor, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                scale: float) -> torch.Tensor: ...


class TorchBackend:
    """The pure-torch reference: correct everywhere, the default on CPU."""

    name = "torch"
    store_kv = staticmethod(reference.store_kv)
    decode = staticmethod(reference.paged_decode_attention)
    prefill = staticmethod(reference.paged_prefill_attention)
    store_kv_int8 = staticmethod(reference.store_kv_int8)
    decode_int8 = staticmethod(reference.paged_decode_attention_int8)
    prefill_int8 = staticmethod(reference.paged_prefill_attention_int8)


def get_backend(device: torch.device, name: str = "auto") -> AttentionBackend:
    if name == "torch" or (name == "auto" and device.type != "cuda"):
        return TorchBackend()
    from kernels import triton_backend  # imported only where Triton can run

    return triton_backend.TritonBackend()


def paged_attention(backend: AttentionBackend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    kv: tuple[torch.Tensor, ...], meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """Store this step's K/V, then attend. q: [T, H, D]; k, v: [T, KVH, D] -> [T, H, D].

    kv is (k_cache, v_cache), or (k_cache, v_cache, k_scales, v_scales) for an int8 cache.
    """
    int8 = len(kv) == 4
    store = backend.store_kv_int8 if int8 else backend.store_kv
    decode = backend.decode_int8 if int8 else backend.decode
    prefill = backend.prefill_int8 if int8 else backend.prefill
    store(k, v, *kv, meta.slot_mapping)
    n = meta.num_decode_tokens
    if meta.num_prefills == 0:
        return decode(q, *kv, meta.decode_block_tables, meta.decode_seq_lens, scale)
    tail = prefill(q[n:], *kv, meta.prefill_block_tables, meta.prefill_query_start_loc,
                   meta.prefill_seq_lens, scale)
    if n == 0:
        return tail
    head = decode(q[:n], *kv, meta.decode_block_tables, meta.decode_seq_lens, scale)
    return torch.cat([head, tail], dim=0)
