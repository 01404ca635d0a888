"""The Triton backend in one import: the functions of `kernels.reference` with the same signatures,
and `TritonBackend`, the object engine/attention.py asks for on CUDA.

Importing this module imports triton and defines the kernels; with TRITON_INTERPRET=1 set before
that, they run on CPU tensors in Triton's interpreter (how the tests check them without a GPU).
"""

from __future__ import annotations

from kernels.cache import store_kv, store_kv_int8
from kernels.decode import paged_decode_attention, paged_decode_attention_int8
from kernels.prefill import paged_prefill_attention, paged_prefill_attention_int8
from kernels.rotary import rotary_store_kv, rotary_store_kv_int8

__all__ = [
    "TritonBackend",
    "paged_decode_attention",
    "paged_decode_attention_int8",
    "paged_prefill_attention",
    "paged_prefill_attention_int8",
    "rotary_store_kv",
    "rotary_store_kv_int8",
    "store_kv",
    "store_kv_int8",
]


class TritonBackend:
    """Attention backend (engine.attention.AttentionBackend) over the Triton kernels."""

    name = "triton"
    store_kv = staticmethod(store_kv)
    decode = staticmethod(paged_decode_attention)
    prefill = staticmethod(paged_prefill_attention)
    store_kv_int8 = staticmethod(store_kv_int8)
    decode_int8 = staticmethod(paged_decode_attention_int8)
    prefill_int8 = staticmethod(paged_prefill_attention_int8)
