"""Reading codes back out of torch's CPU int4 packing, so prefill can multiply densely.

`_convert_weight_to_int4pack_for_cpu` interleaves rows in blocks whose size follows the CPU build
that torch dispatched to: per block of B rows and per column, byte j holds row j in its low nibble
and row j + B/2 in its high one (B = 64 with AVX512, 32 with AVX2), or rows 2j and 2j+1 without
vectorization. Which one this process got is not exposed, so `detect_layout` packs a probe of
known codes and keeps the decoder that gives them back; with none, there is no unpacking here and
the op serves every row count. Only weights whose row count is a multiple of the block are read
back (a shorter last block is packed differently).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

PROBE_ROWS, PROBE_COLS = 128, 64


@dataclass(slots=True, frozen=True)
class PackLayout:
    block_rows: int
    halves: bool  # True: byte j holds rows j and j + B/2; False: rows 2j and 2j + 1

    def can_unpack(self, num_rows: int) -> bool:
        return num_rows % self.block_rows == 0

    def unpack(self, packed: torch.Tensor, num_rows: int, num_cols: int) -> torch.Tensor:
        """uint8 codes [num_rows, num_cols], values 0..15, from the op's packed bytes."""
        blocks = packed.reshape(num_rows // self.block_rows, num_cols, self.block_rows // 2)
        lo, hi = blocks & 15, blocks >> 4
        if self.halves:
            codes = torch.cat([lo, hi], dim=2)
        else:
            codes = torch.stack([lo, hi], dim=3).reshape(blocks.shape[0], num_cols, self.block_rows)
        return codes.transpose(1, 2).reshape(num_rows, num_cols)


CANDIDATES = (PackLayout(64, True), PackLayout(32, True), PackLayout(32, False))


@functools.cache
def detect_layout() -> PackLayout | None:
    """The layout this process's int4 packing uses, or None when no candidate reads the probe back."""
    pack = getattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu", None)
    if pack is None:
        return None
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (PROBE_ROWS, PROBE_COLS), generator=generator, dtype=torch.int32)
    packed = pack(codes, 1)
    for layout in CANDIDATES:
        if torch.equal(layout.unpack(packed, PROBE_ROWS, PROBE_COLS).to(torch.int32), codes):
            return layout
    return None
