"""Kernel tests run the Triton kernels on CPU in Triton's interpreter unless told otherwise.

Triton reads TRITON_INTERPRET when a function is *defined* by `@triton.jit` (it builds an interpreted
or a compiled function then), and that includes triton's own helpers (tl.sum, tl.cdiv, ...) defined
when triton is first imported. So the flag is set here, at conftest import, before the tests below
import the kernels. If triton was already imported without it (by another package's tests, or by
torch probing for it), nothing in this process can run a kernel on CPU: the tests of this directory
that were selected then run once in a fresh `python -m pytest` subprocess with the flag, and each test
here reports its outcome there (`pytest_pyfunc_call` below).

With TRITON_INTERPRET=0 and a CUDA device, the same tests run on the GPU. The interpreter runs need
triton 3.9 (the dev extras' pin): triton 3.6's interpreter fails on loops bounded by loaded values
under numpy 2 ("only 0-dimensional arrays can be converted"), which says nothing about the GPU path.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import is_interpreting

HERE = Path(__file__).resolve().parent
CHILD_FLAG = "KERNEL_TESTS_SUBPROCESS"


def _triton_imported_before_flag() -> bool:
    if not is_interpreting() or "triton" not in sys.modules:
        return False
    import triton.language.standard as standard
    from triton.runtime.interpreter import InterpretedFunction

    return not isinstance(standard.cdiv, InterpretedFunction)


RUN_IN_SUBPROCESS = _triton_imported_before_flag()
if RUN_IN_SUBPROCESS and os.environ.get(CHILD_FLAG):
    raise RuntimeError("triton was imported before TRITON_INTERPRET=1 even in a fresh subprocess")


def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run normally, or report the outcome of this test in the interpreter subprocess."""
    if not RUN_IN_SUBPROCESS:
        return None
    outcome = _subprocess_outcomes(pyfuncitem.session).get(pyfuncitem.nodeid, "not reported")
    if outcome == "PASSED":
        return True
    pytest.fail(f"under TRITON_INTERPRET=1 in a subprocess: {outcome}", pytrace=False)


def _subprocess_outcomes(session: pytest.Session) -> dict[str, str]:
    """nodeid -> PASSED / FAILED ... for this directory's selected tests, run once per session."""
    cached = getattr(session, "_kernel_outcomes", None)
    if cached is not None:
        return cached
    nodeids = [item.nodeid for item in session.items if Path(item.path).resolve().is_relative_to(HERE)]
    command = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *nodeids]
    env = os.environ | {"TRITON_INTERPRET": "1", CHILD_FLAG: "1"}
    result = subprocess.run(command, cwd=session.config.rootpath, env=env, capture_output=True, text=True,
                            timeout=1200)
    outcomes = {}
    for line in result.stdout.splitlines():
        status, _, rest = line.partition(" ")
        if status in ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS"):
            nodeid, _, reason = rest.partition(" - ")
            outcomes[nodeid] = status if status == "PASSED" else f"{status} {reason}".strip()
    session._kernel_outcomes = outcomes
    return outcomes


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
# softmax probabilities to bf16 before the P @ V product, as flash attention does; the worst seen over
# 8 x 15 random bf16 cases in the interpreter was 6.8e-3 (fp32: 8e-7).
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 1.5e-2, torch.float16: 2e-3}


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
