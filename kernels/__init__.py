"""Attention and KV-cache kernels: pure-torch references (`kernels.reference`), plain-torch attention
planned once per step for CPUs (`kernels.cpu_attention`), and Triton versions with the same signatures
(`kernels.triton_backend`, importable only where triton is installed).

`import kernels` never imports triton; ask `backend_available()` before importing the Triton module.
"""

from kernels._runtime import backend_available, can_import_triton, is_interpreting

__all__ = ["backend_available", "can_import_triton", "is_interpreting"]
