"""Kernel tests run the Triton kernels on CPU in Triton's interpreter unless told otherwise.

Triton reads TRITON_INTERPRET when a kernel is *defined* (`@triton.jit` builds an interpreted or a
compiled function then), so the flag is set here, at conftest import, before any kernel module is
imported by the tests below. If a kernel module was imported earlier in the session without the flag
(by another package's tests), it is reloaded so its kernels are redefined as interpreted ones; module
reload rebinds names in place, so functions imported before still find the new kernels.

With TRITON_INTERPRET=0 and a CUDA device, the same tests run on the GPU.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from dataclasses import dataclass

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import is_interpreting

KERNEL_MODULES = ("kernels._tile", "kernels.cache", "kernels.decode", "kernels.prefill",
                  "kernels.triton_backend")


def _ensure_interpreted() -> None:
    if not is_interpreting():
        return
    from triton.runtime.interpreter import InterpretedFunction

    tile = sys.modules.get("kernels._tile")
    if tile is None or isinstance(tile.tile_dot, InterpretedFunction):
        return
    for name in KERNEL_MODULES:
        if name in sys.modules:
            importlib.reload(sys.modules[name])


_ensure_interpreted()


@pytest.fixture
def device() -> torch.device:
    if is_interpreting() or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


@pytest.fixture(autouse=True)
def fresh_seed() -> int:
    """A new seed each run (fresh random inputs); KERNEL_TEST_SEED replays one. Shown on failure."""
    seed = int(os.environ.get("KERNEL_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    torch.manual_seed(seed)
    print(f"KERNEL_TEST_SEED={seed}")
    return seed


# Relative error (max |out - ref| / max |ref|) allowed per input dtype. bf16 kernels round the
# softmax probabilities to bf16 before the P @ V product, as flash attention does.
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2.5e-2}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6))


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert bool(torch.isfinite(out).all()), "output holds NaN/inf: an element was not written"
    error = relative_error(out, ref)
    assert error <= TOLERANCE[dtype], f"relative error {error:.3g} > {TOLERANCE[dtype]:.3g}"


@dataclass(slots=True)
class PagedCache:
    """A paged K/V cache filled for some sequences, plus a poisoned twin of it.

    `clean` holds zeros in every slot no sequence owns; `poisoned` holds the same tokens and NaN (int8:
    127 with NaN scales) everywhere else, including block 0, which the zero padding of the block
    tables points at. A kernel that reads a slot it should not turns its output into NaN or garbage.
    """

    k_clean: torch.Tensor
    v_clean: torch.Tensor
    k_poisoned: torch.Tensor
    v_poisoned: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor


def make_paged_cache(seq_lens: list[int], num_kv_heads: int, head_dim: int, page_size: int,
                     dtype: torch.dtype, device: torch.device, spare_pages: int = 2) -> PagedCache:
    """Blocks scattered at random (never block 0); tables padded with 0 and `spare_pages` wider."""
    pages = [(n + page_size - 1) // page_size for n in seq_lens]
    width = max(pages) + spare_pages
    num_blocks = 1 + sum(pages) + 3
    order = (torch.randperm(num_blocks - 1) + 1).tolist()
    tables = torch.zeros((len(seq_lens), width), dtype=torch.int32)
    shape = (num_blocks, page_size, num_kv_heads, head_dim)
    k_clean, v_clean = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
    k_poisoned = torch.full(shape, float("nan"), dtype=dtype)
    v_poisoned = torch.full(shape, float("nan"), dtype=dtype)
    for i, (length, num_pages) in enumerate(zip(seq_lens, pages, strict=True)):
        blocks = torch.tensor([order.pop() for _ in range(num_pages)], dtype=torch.int32)
        tables[i, :num_pages] = blocks
        slots = _slots(blocks, page_size, length)
        for clean, poisoned in ((k_clean, k_poisoned), (v_clean, v_poisoned)):
            values = torch.randn(length, num_kv_heads, head_dim).to(dtype)
            clean.view(-1, num_kv_heads, head_dim)[slots] = values
            poisoned.view(-1, num_kv_heads, head_dim)[slots] = values
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    return PagedCache(*(t.to(device) for t in (k_clean, v_clean, k_poisoned, v_poisoned, tables, lens)))


def _slots(blocks: torch.Tensor, page_size: int, length: int) -> torch.Tensor:
    slots = blocks.long()[:, None] * page_size + torch.arange(page_size)[None, :]
    return slots.flatten()[:length]


def nan_like(x: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x, float("nan"))


@dataclass(slots=True)
class Int8Cache:
    """`PagedCache` quantized by the reference; poisoned slots hold 127 with NaN scales."""

    k_clean: tuple[torch.Tensor, torch.Tensor]
    v_clean: tuple[torch.Tensor, torch.Tensor]
    k_poisoned: tuple[torch.Tensor, torch.Tensor]
    v_poisoned: tuple[torch.Tensor, torch.Tensor]
    block_tables: torch.Tensor
    seq_lens: torch.Tensor


def make_int8_cache(cache: PagedCache) -> Int8Cache:
    from kernels.reference import quantize_int8

    owned = ~torch.isnan(cache.k_poisoned.float()).any(dim=-1)
    parts = []
    for clean in (cache.k_clean, cache.v_clean):
        values, scales = quantize_int8(clean)
        bad_values, bad_scales = values.clone(), scales.clone()
        bad_values[~owned] = 127
        bad_scales[~owned] = float("nan")
        parts.append(((values, scales), (bad_values, bad_scales)))
    return Int8Cache(parts[0][0], parts[1][0], parts[0][1], parts[1][1], cache.block_tables, cache.seq_lens)


@pytest.fixture
def paged_cache(device: torch.device):
    """make_paged_cache(seq_lens, num_kv_heads, head_dim, page_size, dtype) on the test device."""
    return functools.partial(make_paged_cache, device=device)


@pytest.fixture
def int8_cache():
    return make_int8_cache


@pytest.fixture
def close():
    """assert_close(out, ref, dtype): finite and within the dtype's relative-error bound."""
    return assert_close
