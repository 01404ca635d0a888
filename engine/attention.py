"""Attention behind one interface: the step's metadata plus a backend that stores K/V and attends.

A step's flattened batch puts decode tokens (one per sequence) first and prefill chunks after, so
each backend can use a batched decode kernel on the head and a varlen prefill kernel on the tail.
The torch backend also gets the step's gather plans in the metadata (built once by the runner, then
shared by every layer) instead of working them out from the block tables in each layer. On CPU its
decode attention is a C++ kernel (kernels.cpu_decode) where one can be built; decodes then need
no plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from kernels import cpu_attention, cpu_decode, cpu_native, reference
from kernels.cpu_attention import AttentionPlan


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # int64 [num_tokens]
    num_decode_tokens: int  # the first num_decode_tokens tokens are decodes, one per sequence
    decode_block_tables: torch.Tensor  # int32 [num_decodes, max_blocks]
    decode_seq_lens: torch.Tensor  # int32 [num_decodes]
    prefill_block_tables: torch.Tensor  # int32 [num_prefills, max_blocks]
    prefill_query_start_loc: torch.Tensor  # int32 [num_prefills + 1], relative to the prefill tail
    prefill_seq_lens: torch.Tensor  # int32 [num_prefills]
    decode_plan: AttentionPlan | None = None  # the torch backend's plans for this step, when planned
    prefill_plans: list[AttentionPlan] | None = None  # one per prefill sequence

    @property
    def num_prefills(self) -> int:
        return int(self.prefill_seq_lens.shape[0])

    @property
    def is_planned(self) -> bool:
        return self.decode_plan is not None or self.prefill_plans is not None

    def plan(self, block_size: int, group: int, dtype: torch.dtype, decodes: bool = True) -> None:
        """Work out the torch backend's gathers and masks for this step, once for every layer
        (`decodes`: for the decode head too, unless the backend's decode kernel reads the cache)."""
        if self.num_decode_tokens and decodes:
            self.decode_plan = cpu_attention.plan_decode(self.decode_block_tables, self.decode_seq_lens,
                                                         block_size, group, dtype)
        if self.num_prefills:
            self.prefill_plans = self._prefill_plans(block_size, group, dtype)

    def _prefill_plans(self, block_size: int, group: int, dtype: torch.dtype) -> list[AttentionPlan]:
        """A plan per sequence: padded together, a step's chunks of unequal length (a 750-token
        prompt beside a 20-token tail) cost up to 3x their attention work in padding."""
        starts = self.prefill_query_start_loc
        return [cpu_attention.plan_prefill(self.prefill_block_tables[i:i + 1], starts[i:i + 2] - starts[i],
                                           self.prefill_seq_lens[i:i + 1], block_size, group, dtype)
                for i in range(self.num_prefills)]


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
    """The default on CPU: kernels.cpu_attention (checked against kernels.reference), decode in C++
    when `native_decode`, and the reference itself for an int8 cache."""

    name = "torch"
    store_kv = staticmethod(reference.store_kv)
    prefill = staticmethod(cpu_attention.paged_prefill_attention)
    store_kv_int8 = staticmethod(reference.store_kv_int8)
    decode_int8 = staticmethod(reference.paged_decode_attention_int8)
    prefill_int8 = staticmethod(reference.paged_prefill_attention_int8)

    def __init__(self, native_decode: bool = False) -> None:
        self.plans_decode = not native_decode
        native, planned = cpu_decode.paged_decode_attention, cpu_attention.paged_decode_attention
        self.decode = native if native_decode else planned


def get_backend(device: torch.device, name: str = "auto") -> AttentionBackend:
    """auto: Triton on CUDA; on CPU torch with the C++ decode kernel where it builds. torch: plain torch."""
    if name == "torch":
        return TorchBackend()
    if name == "auto" and device.type != "cuda":
        return TorchBackend(native_decode=device.type == "cpu" and cpu_native.available())
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
    if meta.is_planned:
        return _attend_planned(backend, q, kv, meta, scale)
    if meta.num_prefills == 0:
        return decode(q, *kv, meta.decode_block_tables, meta.decode_seq_lens, scale)
    tail = prefill(q[n:], *kv, meta.prefill_block_tables, meta.prefill_query_start_loc,
                   meta.prefill_seq_lens, scale)
    if n == 0:
        return tail
    head = decode(q[:n], *kv, meta.decode_block_tables, meta.decode_seq_lens, scale)
    return torch.cat([head, tail], dim=0)


def _attend_planned(backend: AttentionBackend, q: torch.Tensor, kv: tuple[torch.Tensor, ...],
                    meta: AttentionMetadata, scale: float) -> torch.Tensor:
    n = meta.num_decode_tokens
    parts = []
    if meta.decode_plan is not None:
        parts.append(cpu_attention.attend(q[:n], *kv, meta.decode_plan, scale))
    elif n:
        parts.append(backend.decode(q[:n], *kv, meta.decode_block_tables, meta.decode_seq_lens, scale))
    starts = meta.prefill_query_start_loc.tolist()
    for i, plan in enumerate(meta.prefill_plans or ()):
        parts.append(cpu_attention.attend(q[n + starts[i]:n + starts[i + 1]], *kv, plan, scale))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
