"""Llama-family decoder over a flattened batch of tokens (Llama 2/3, Mistral, Qwen2, SmolLM2).

No padding: a step's tokens from every sequence are concatenated; attention finds each sequence's
context through its block table. Numerics follow HF transformers (fp32 RMSNorm, rotate-half RoPE)
so greedy outputs match it token for token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention import AttentionBackend, AttentionMetadata, paged_attention
from engine.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused op, bit-identical to the lines below in fp32
            return torch.rms_norm(x, self.weight.shape, self.weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_inv_freq(config: ModelConfig, freq_factors: torch.Tensor | None = None) -> torch.Tensor:
    dim = config.head_dim
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if freq_factors is not None:
        return inv / freq_factors.float()
    scaling = config.rope_scaling or {}
    if scaling.get("rope_type", scaling.get("type")) == "llama3":
        return _llama3_inv_freq(inv, scaling)
    return inv


def _llama3_inv_freq(inv: torch.Tensor, s: dict) -> torch.Tensor:
    factor, low, high = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old_len = s.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


class Rotary(nn.Module):
    """RoPE from a cos/sin table over every position, built once; a step looks its positions up once.

    The table holds cat(cos, cos) and cat(-sin, sin) of position * inv_freq in fp32 (as HF computes
    them), so x * cos + roll(x, half) * sin is HF's x * cos + rotate_half(x) * sin, bit for bit.
    It is rebuilt when inv_freq is replaced (the runner sets fp32 frequencies after a dtype cast) and
    grows (doubling) when the runner reserves positions past its end: a forward pass never resizes it.
    """

    def __init__(self, inv_freq: torch.Tensor, max_positions: int = 4096) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.max_positions = max_positions
        self._table: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def table(self, num_positions: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin [>= num_positions, head_dim]; rebuilt only when stale or too short."""
        built = self._table
        if built is None or built[0] is not self.inv_freq or built[1].shape[0] < num_positions:
            while self.max_positions < num_positions:
                self.max_positions *= 2
            inv = self.inv_freq.float()
            freqs = torch.arange(self.max_positions, device=inv.device).float()[:, None] * inv[None, :]
            cos, sin = freqs.cos(), freqs.sin()
            built = (self.inv_freq, torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1))
            self._table = built
        return built[1], built[2]

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin [num_tokens, 1, head_dim] at `positions`, in `dtype`."""
        cos, sin = self.table()
        return cos[positions].to(dtype)[:, None, :], sin[positions].to(dtype)[:, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [num_tokens, heads, head_dim] rotated by the step's `Rotary` output (rotate-half RoPE)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


# Checkpoints name the projections one by one; the model runs them fused (one matmul instead of
# three, or two), each fused weight stacking its parts' output rows in this order.
FUSED_PROJECTIONS = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


class Attention(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.q_size, self.kv_size = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        self.qkv_proj = nn.Linear(c.hidden_size, self.q_size + 2 * self.kv_size, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=False)
        self.scale = c.head_dim ** -0.5

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], kv: tuple[torch.Tensor, ...],
                meta: AttentionMetadata, backend: AttentionBackend) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.qkv_proj(x)
        # q and k rotate together: one set of RoPE ops over their heads side by side.
        qk = apply_rotary(qkv[:, :self.q_size + self.kv_size].view(t, -1, self.head_dim), *rope)
        q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
        v = qkv[:, self.q_size + self.kv_size:].view(t, self.num_kv_heads, self.head_dim)
        o = paged_attention(backend, q, k, v, kv, meta, self.scale)
        return self.o_proj(o.reshape(t, self.q_size))


class MLP(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, rope, kv, meta, backend) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, kv, meta, backend)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig, freq_factors: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.rotary = Rotary(rope_inv_freq(config, freq_factors), min(config.max_position_embeddings, 4096))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding with the output head (again after to_empty, which unties)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_caches: list[tuple[torch.Tensor, ...]], backend: AttentionBackend) -> torch.Tensor:
        x = self.model.embed_tokens(input_ids)
        rope = self.rotary(positions, x.dtype)
        for layer, kv in zip(self.model.layers, kv_caches, strict=True):
            x = layer(x, rope, kv, meta, backend)
        return self.model.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_parameters(remove_duplicate=False))
        for name, tensor in fuse_projections(weights).items():
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            if name not in params:
                raise ValueError(f"unexpected tensor {name} in checkpoint")
            if params[name].shape != tensor.shape:
                raise ValueError(f"shape mismatch for {name}: checkpoint {tuple(tensor.shape)}, "
                                 f"model {tuple(params[name].shape)}")
            with torch.no_grad():
                params[name].copy_(tensor)


def fuse_projections(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint names to the model's: q/k/v and gate/up tensors concatenated by output rows."""
    out = dict(weights)
    for name in weights:
        for fused, parts in FUSED_PROJECTIONS.items():
            prefix, sep, suffix = name.partition(f".{parts[0]}.")
            if not sep:
                continue
            names = [f"{prefix}.{part}.{suffix}" for part in parts]
            if all(n in weights for n in names):
                out[f"{prefix}.{fused}.{suffix}"] = torch.cat([out.pop(n) for n in names], dim=0)
    return out
