"""The benchmark commands run end to end and print their comparison (tiny random model; no timings
are asserted — the numbers themselves live in docs/benchmarks.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def _appliance(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("appliance", path=os.path.dirname(sys.executable)) or "appliance"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=600)


def test_bench_engine_prints_both_systems_and_ratio():
    r = _appliance("bench", "engine", "--model", "random:tiny", "--num-requests", "4", "--output-len", "3",
                   "--hf-batch-size", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    for name in ("ours (prefix cache off)", "ours (prefix cache on)", "HF transformers static batching"):
        assert name in out
    assert out.count("x\n") >= 3  # one ratio per row


def test_bench_prefix_prints_off_on_and_long_prefix():
    r = _appliance("bench", "prefix", "--model", "random:tiny", "--num-requests", "6", "--output-len", "2",
                   "--concurrency", "3", "--long-prefix-tokens", "200")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "cache on vs off" in r.stdout and "cold TTFT" in r.stdout and "warm TTFT" in r.stdout
