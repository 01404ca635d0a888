"""Builds the CPU kernels written in C++ (kernels.cpu_decode, kernels.cpu_gemv) into one extension.

Compiled with torch's JIT extension builder (g++ and ninja) on first use, about a minute, into
torch's extension cache, named by a hash of the sources, this CPU's flags and the torch version:
`-march=native` code never runs on another CPU, and one build serves every kernel. Where no
compiler is available the callers keep their torch paths (`available()` says which).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import sys
from pathlib import Path

import torch

log = logging.getLogger(__name__)
FUNCTIONS = ["paged_decode", "small_linear"]


def _cpu_fingerprint() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        flags = platform.processor()
    return flags


def _ninja_on_path() -> None:
    """torch's builder runs `ninja` from PATH; the `ninja` wheel puts it beside this python."""
    here = str(Path(sys.executable).parent)
    if shutil.which("ninja") is None and shutil.which("ninja", path=here):
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")


@functools.cache
def module():
    from torch.utils.cpp_extension import load_inline

    from kernels import cpu_decode, cpu_gemv  # they call module(): imported here, not at the top

    _ninja_on_path()
    source = cpu_decode.SOURCE + cpu_gemv.SOURCE
    digest = hashlib.sha256((source + _cpu_fingerprint() + torch.__version__).encode()).hexdigest()[:12]
    log.info("building the CPU kernels (once per machine)")
    return load_inline(name=f"appliance_cpu_kernels_{digest}", cpp_sources=[source], functions=FUNCTIONS,
                       extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
                       verbose=False)


@functools.cache
def available() -> bool:
    """Whether the kernels are built (building them now if need be); False where they cannot be."""
    try:
        module()
    except Exception as exc:  # no compiler, no ninja, no headers: the torch paths serve
        log.warning("CPU C++ kernels unavailable, using plain torch: %s", exc)
        return False
    return True
