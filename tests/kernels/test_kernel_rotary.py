"""Triton RoPE fused with the K/V store against the torch reference (CPU interpreter in CI)."""

from __future__ import annotations

import pytest
import torch

from kernels import reference, rotary

PAGE_SIZE, NUM_BLOCKS, MAX_POSITIONS = 8, 6, 300
# (query heads, KV heads, head dim): SmolLM2's 9/3 heads; a head dim whose half is not a power of two.
SHAPES = [(9, 3, 64), (4, 2, 80)]


def _inputs(shape, num_tokens: int, dtype: torch.dtype, device: torch.device):
    heads, kv_heads, head_dim = shape
    q = torch.randn(num_tokens, heads, head_dim, device=device).to(dtype)
    fused = torch.randn(num_tokens, 2, kv_heads, head_dim, device=device).to(dtype)
    positions = torch.randint(0, MAX_POSITIONS, (num_tokens,), device=device)
    slots = torch.randperm(NUM_BLOCKS * PAGE_SIZE, device=device)[:num_tokens]
    slots[1::4] = -1
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    return q, fused[:, 0], fused[:, 1], slots, positions, reference.rotary_cos_sin(inv_freq, MAX_POSITIONS)


def _caches(shape, dtype: torch.dtype, device: torch.device, fill: float) -> list[torch.Tensor]:
    size = (NUM_BLOCKS, PAGE_SIZE, shape[1], shape[2])
    return [torch.full(size, fill, dtype=dtype, device=device) for _ in range(2)]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


# The reference multiplies in the input dtype as HF does; the kernel in fp32, rounding once.
BOUND = {torch.float32: 1e-6, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"h{s[0]}kv{s[1]}d{s[2]}")
def test_rotary_store_kv_matches_reference(dtype, shape, device):
    q, key, value, slots, positions, cos_sin = _inputs(shape, 13, dtype, device)
    q_ref = q.clone()
    mine, theirs = _caches(shape, dtype, device, float("nan")), _caches(shape, dtype, device, float("nan"))
    assert rotary.rotary_store_kv(q, key, value, *mine, slots, positions, cos_sin) is q
    reference.rotary_store_kv(q_ref, key, value, *theirs, slots, positions, cos_sin)
    assert _relative(q, q_ref) <= BOUND[dtype]
    written = slots[slots >= 0]
    for a, b in zip(mine, theirs, strict=True):
        flat_a, flat_b = a.view(-1, *a.shape[2:]), b.view(-1, *b.shape[2:])
        assert _relative(flat_a[written], flat_b[written]) <= BOUND[dtype]
        assert int(torch.isnan(flat_a[:, 0, 0]).logical_not().sum()) == written.numel()
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16}[dtype]
    assert torch.equal(mine[1].view(bits), theirs[1].view(bits)), "values are stored as they come"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_store_kv_int8_matches_reference(dtype, device):
    shape = SHAPES[0]
    q, key, value, slots, positions, cos_sin = _inputs(shape, 13, dtype, device)
    q_ref = q.clone()
    values = [_caches(shape, torch.int8, device, -128) for _ in range(2)]
    scales = [[torch.zeros(NUM_BLOCKS, PAGE_SIZE, shape[1], device=device) for _ in range(2)]
              for _ in range(2)]
    rotary.rotary_store_kv_int8(q, key, value, *values[0], *scales[0], slots, positions, cos_sin)
    reference.rotary_store_kv_int8(q_ref, key, value, *values[1], *scales[1], slots, positions, cos_sin)
    assert _relative(q, q_ref) <= BOUND[dtype]
    allowed = 0 if dtype == torch.float32 else 2
    for mine, theirs in zip(values[0], values[1], strict=True):
        assert int((mine.int() - theirs.int()).abs().max()) <= allowed
    for mine, theirs in zip(scales[0], scales[1], strict=True):
        assert _relative(mine, theirs) <= BOUND[dtype]
