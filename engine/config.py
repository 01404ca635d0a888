"""Model and engine configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(slots=True)
class ModelConfig:
    """The shape of a Llama-family decoder, read from GGUF metadata or an HF config.json."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # HF-style {"rope_type": "llama3", "factor": ..., ...}
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    architecture: str = "llama"
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    name: str = "model"

    def __post_init__(self) -> None:
        assert self.num_heads % self.num_kv_heads == 0, "query heads must be a multiple of KV heads"


@dataclass(slots=True)
class EngineConfig:
    model: str | None = None  # GGUF file or HF checkpoint dir; None = the bundled SmolLM2
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    block_size: int = 16
    kv_cache_gib: float = 1.0  # CPU: KV pool size
    gpu_memory_utilization: float = 0.85  # CUDA: share of memory for weights + activations + KV
    num_blocks: int | None = None  # overrides the memory budget (tests)
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048  # per-step token budget (prefill chunks + decodes)
    max_model_len: int | None = None  # defaults to the model's context length
    enable_prefix_caching: bool = True
    attention_backend: str = "auto"  # auto (Triton on CUDA; torch + C++ decode on CPU) | torch | triton
    enable_cuda_graphs: bool = True  # capture decode steps on CUDA
    kv_cache_dtype: str = "auto"  # auto (the model dtype) | int8 (per token-and-head scales, ~1.9x blocks)
    quantization: str = "none"  # weights: none (float) | auto (what the checkpoint carries) | int8 | int4
    seed: int = 0
    num_threads: int | None = None  # torch intra-op threads on CPU; None = all cores
    # kv_reuse="chunks" (chunk_kv.py): a reused chunk's first tokens computed again in their new context
    chunk_recompute_tokens: int = 16

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.attention_backend not in ("auto", "torch", "triton"):
            raise ValueError(f"attention_backend must be auto, torch or triton, "
                             f"got {self.attention_backend!r}")
        if self.kv_cache_dtype not in ("auto", "int8"):
            raise ValueError(f"kv_cache_dtype must be auto or int8, got {self.kv_cache_dtype!r}")
        if self.quantization not in ("auto", "none", "int8", "int4"):
            raise ValueError(f"quantization must be auto, none, int8 or int4, got {self.quantization!r}")
        if self.chunk_recompute_tokens < 0:
            raise ValueError("chunk_recompute_tokens must be >= 0")
        if not (self.kv_cache_gib > 0 and math.isfinite(self.kv_cache_gib)):
            raise ValueError("kv_cache_gib must be a positive number")
