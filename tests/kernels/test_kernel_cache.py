"""Triton store_kv / store_kv_int8 against the torch reference (CPU interpreter in CI)."""

from __future__ import annotations

import pytest
import torch

from kernels import cache, is_interpreting, reference

NUM_KV_HEADS, HEAD_DIM, PAGE_SIZE, NUM_BLOCKS = 3, 24, 5, 7


def _new_tokens(num_tokens: int, dtype: torch.dtype, device: torch.device):
    """key/value as the strided column views of one fused projection, as a model produces them."""
    fused = torch.randn(num_tokens, 3 * NUM_KV_HEADS * HEAD_DIM, device=device).to(dtype)
    key = fused[:, :NUM_KV_HEADS * HEAD_DIM].view(num_tokens, NUM_KV_HEADS, HEAD_DIM)
    value = fused[:, 2 * NUM_KV_HEADS * HEAD_DIM:].view(num_tokens, NUM_KV_HEADS, HEAD_DIM)
    return key, value


def _slots(num_tokens: int, device: torch.device) -> torch.Tensor:
    """Distinct random slots, every third one -1 (padding the kernel must skip)."""
    slots = torch.randperm(NUM_BLOCKS * PAGE_SIZE)[:num_tokens]
    slots[::3] = -1
    return slots.to(device)


def _bits(x: torch.Tensor) -> torch.Tensor:
    """Compare NaN-poisoned tensors bit for bit."""
    return x.view({1: torch.int8, 2: torch.int16, 4: torch.int32}[x.element_size()])


@pytest.mark.parametrize(("key_dtype", "cache_dtype"), [
    (torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16),
])
@pytest.mark.parametrize("num_tokens", [1, 13])
def test_store_kv_matches_reference(key_dtype, cache_dtype, num_tokens, device):
    key, value = _new_tokens(num_tokens, key_dtype, device)
    slots = _slots(num_tokens, device)
    shape = (NUM_BLOCKS, PAGE_SIZE, NUM_KV_HEADS, HEAD_DIM)
    caches = [torch.full(shape, float("nan"), dtype=cache_dtype, device=device) for _ in range(4)]
    cache.store_kv(key, value, caches[0], caches[1], slots)
    reference.store_kv(key, value, caches[2], caches[3], slots)
    assert torch.equal(_bits(caches[0]), _bits(caches[2]))
    assert torch.equal(_bits(caches[1]), _bits(caches[3]))
    assert int(torch.isnan(caches[0][..., 0, 0]).logical_not().sum()) == int((slots >= 0).sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_kv_int8_matches_reference(dtype, device):
    key, value = _new_tokens(13, dtype, device)
    key[4, 1] = 0.0  # an all-zero row: scale 1, values 0
    value[5] *= 1000.0
    slots = _slots(13, device)
    shape = (NUM_BLOCKS, PAGE_SIZE, NUM_KV_HEADS, HEAD_DIM)
    values = [torch.full(shape, -128, dtype=torch.int8, device=device) for _ in range(4)]
    scales = [torch.full(shape[:3], float("nan"), device=device) for _ in range(4)]
    cache.store_kv_int8(key, value, values[0], values[1], scales[0], scales[1], slots)
    reference.store_kv_int8(key, value, values[2], values[3], scales[2], scales[3], slots)
    # The interpreter divides like torch; a GPU's division may round a tie the other way.
    allowed = 0 if is_interpreting() else 1
    for mine, theirs in ((0, 2), (1, 3)):
        assert (values[mine].int() - values[theirs].int()).abs().max() <= allowed
        assert torch.equal(_bits(scales[mine]), _bits(scales[theirs]))
    assert int((values[0] == -128).all(dim=(-1, -2)).logical_not().sum()) == int((slots >= 0).sum())


def test_int8_round_trip_error_is_half_a_step():
    x = torch.randn(50, 4, 64) * torch.rand(50, 4, 1) * 10
    values, scales = reference.quantize_int8(x)
    error = (reference.dequantize_int8(values, scales) - x).abs()
    assert bool((error <= scales[..., None] * 0.5 + 1e-6).all())
    assert int(values.abs().max()) == 127
