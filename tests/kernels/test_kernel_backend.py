"""The Triton backend as the engine drives it, and `import kernels` where triton cannot run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

import kernels
from kernels import reference
from kernels.triton_backend import TritonBackend

HEADS, KV_HEADS, HEAD_DIM, PAGE_SIZE = 9, 3, 32, 8


def test_prefill_then_decode_steps_follow_the_reference(device):
    """Two sequences: a chunked prefill (second chunk over the first's cache), then decode steps."""
    backend = TritonBackend()
    shape = (12, PAGE_SIZE, KV_HEADS, HEAD_DIM)
    caches = {name: [torch.zeros(shape, device=device) for _ in range(2)] for name in ("triton", "torch")}
    tables = torch.tensor([[3, 7, 1, 0], [5, 2, 9, 11]], dtype=torch.int32, device=device)
    lens = [0, 0]
    for chunk in ([11, 6], [5, 1], [1, 1], [1, 1]):
        outputs = {}
        starts = torch.tensor([0, chunk[0], sum(chunk)], dtype=torch.int32, device=device)
        slots = _slots(tables, lens, chunk).to(device)
        lens = [n + c for n, c in zip(lens, chunk, strict=True)]
        seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
        q = torch.randn(sum(chunk), HEADS, HEAD_DIM, device=device)
        k, v = torch.randn(2, sum(chunk), KV_HEADS, HEAD_DIM, device=device)
        for name, ops in (("triton", backend), ("torch", reference)):
            ops.store_kv(k, v, *caches[name], slots)
            if chunk == [1, 1]:
                decode = backend.decode if name == "triton" else reference.paged_decode_attention
                outputs[name] = decode(q, *caches[name], tables, seq_lens, 0.2)
            else:
                prefill = backend.prefill if name == "triton" else reference.paged_prefill_attention
                outputs[name] = prefill(q, *caches[name], tables, starts, seq_lens, 0.2)
        assert torch.equal(caches["triton"][0], caches["torch"][0])
        torch.testing.assert_close(outputs["triton"], outputs["torch"], rtol=2e-5, atol=2e-5)


def _slots(tables: torch.Tensor, lens: list[int], chunk: list[int]) -> torch.Tensor:
    slots = []
    for row, start, count in zip(tables.tolist(), lens, chunk, strict=True):
        slots += [row[p // PAGE_SIZE] * PAGE_SIZE + p % PAGE_SIZE for p in range(start, start + count)]
    return torch.tensor(slots, dtype=torch.int64)


def test_backend_available_follows_device_and_interpreter():
    assert kernels.can_import_triton()
    assert kernels.backend_available("cuda") == torch.cuda.is_available()
    assert kernels.backend_available("cpu") == kernels.is_interpreting()
    assert not kernels.backend_available("meta")


def test_import_kernels_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import kernels, kernels.reference\n"
            "assert not kernels.can_import_triton()\n"
            "assert not kernels.backend_available('cuda') and not kernels.backend_available('cpu')\n")
    _python(code, {"TRITON_INTERPRET": "1"})


def test_kernel_tests_run_when_triton_was_imported_before_the_flag():
    """conftest.py then runs the selected kernel tests in an interpreter subprocess: in this process
    the kernels could not run on CPU at all, so a pass means the subprocess ran and passed them."""
    node = "tests/kernels/test_kernel_cache.py::test_store_kv_matches_reference"
    code = ("import sys, triton, pytest\n"
            f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', {node!r}]))\n")
    _python(code, {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})  # startup time: these tests need no plugin


def _python(code: str, extra_env: dict[str, str]) -> None:
    inherited = ("TRITON_INTERPRET", "KERNEL_TESTS_SUBPROCESS")  # this may itself run in that subprocess
    env = {k: v for k, v in os.environ.items() if k not in inherited} | extra_env
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
