"""Where the Triton kernels can run, decided without importing triton unless asked.

`import kernels` must work on machines without triton (triton wheels exist only for some platforms),
so nothing here imports it at module import time.
"""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def can_import_triton() -> bool:
    """True when the `triton` package is installed and imports cleanly."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def is_interpreting() -> bool:
    """True when kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 at kernel definition)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def backend_available(device: torch.device | str | None = None) -> bool:
    """Whether the Triton backend can run on `device` (default: the current CUDA device).

    Needs triton importable and either a CUDA device or the CPU interpreter for CPU tensors.
    """
    if not can_import_triton():
        return False
    kind = torch.device(device).type if device is not None else "cuda"
    if kind == "cuda":
        return torch.cuda.is_available()
    return kind == "cpu" and is_interpreting()


def num_compute_units(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; a small fixed count for the CPU interpreter."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4
