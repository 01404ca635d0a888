"""Building blocks shared by the attention kernels: paged tile addressing and a portable dot.

Imports triton: only the kernel modules import this file, and only when the Triton path is used.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._runtime import is_interpreting

# tl.dot needs every dimension >= 16 on the GPU.
MIN_DOT = 16


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def check_page_size(page_size: int) -> None:
    """Tiles and pages nest only when both are powers of two (the engine's default page is 16)."""
    if page_size < 1 or page_size & (page_size - 1):
        raise ValueError(f"the Triton kernels need a power-of-two page (block) size, got {page_size}")


def dot_settings(q_dtype: torch.dtype) -> dict[str, object]:
    """Constexprs for `tile_dot`: fp32 inputs stay exact (no TF32) so they match the fp32 reference.

    The CPU interpreter (triton 3.9) multiplies bf16 operands as their raw uint16 bits, so there
    operands are upcast to fp32 after being rounded to the dtype the GPU would use: same values,
    only the accumulation order differs.
    """
    return {
        "UPCAST_DOT": is_interpreting(),
        "DOT_PRECISION": "ieee" if q_dtype == torch.float32 else "tf32",
    }


@triton.jit
def tile_dot(a, b, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """a @ b with fp32 accumulation."""
    if UPCAST_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=DOT_PRECISION, out_dtype=tl.float32)


def tile_layout(tile: int, page_size: int) -> dict[str, int]:
    """Constexprs of `tile_pages`: pages a tile spans (PAGES) and tokens it takes from each (SUB)."""
    check_page_size(tile)
    check_page_size(page_size)
    pages = max(1, tile // page_size)
    return {"PAGE_SIZE": page_size, "TILE": tile, "PAGES": pages, "SUB": tile // pages}


@triton.jit
def tile_pages(table_row_ptr, tile_start, num_pages, PAGE_SIZE: tl.constexpr, TILE: tl.constexpr,
               PAGES: tl.constexpr, SUB: tl.constexpr):
    """(block id, offset in block) of tokens tile_start .. tile_start+TILE, each int64 [TILE].

    The block table is read once per tile: PAGES = TILE // PAGE_SIZE entries when a tile spans several
    pages, one entry when a page holds several tiles. Both sizes are powers of two and tiles start
    at multiples of TILE, so a tile never covers part of a page it shares with another tile's
    start. Pages at or past `num_pages` read block 0; the caller masks their tokens.
    """
    pages = tile_start // PAGE_SIZE + tl.arange(0, PAGES)
    blocks = tl.load(table_row_ptr + pages, mask=pages < num_pages, other=0).to(tl.int64)
    offsets = (tile_start % PAGE_SIZE + tl.arange(0, SUB)).to(tl.int64)
    block_of = tl.reshape(tl.broadcast_to(blocks[:, None], [PAGES, SUB]), [TILE])
    offset_of = tl.reshape(tl.broadcast_to(offsets[None, :], [PAGES, SUB]), [TILE])
    return block_of, offset_of


@triton.jit
def tile_operand(x, dtype: tl.constexpr, IS_INT8: tl.constexpr):
    """A K/V tile as a dot operand of `dtype`; int8 values go through fp32 (exact either way).

    The detour matters only to the CPU interpreter, whose int -> bf16 cast copies the integer into the
    bf16 bit pattern instead of converting it.
    """
    if IS_INT8:
        return x.to(tl.float32).to(dtype)
    return x.to(dtype)
