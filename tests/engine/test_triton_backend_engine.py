"""The engine runs end to end on the Triton backend (CPU interpreter) with the torch backend's output.

Runs in a subprocess because TRITON_INTERPRET must be set before triton is first imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# find_spec, not import: importing triton here, before tests/kernels sets TRITON_INTERPRET, would
# force the kernel tests into their subprocess mode.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")

SCRIPT = r"""
import json, sys
from engine import EngineConfig, LLMEngine, SamplingParams
from tests.engine.conftest import write_tiny_checkpoint
from pathlib import Path
path = write_tiny_checkpoint(Path(sys.argv[1]), "qwen2", seed=11)
out = {}
prompts = ["The capital of France is", "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21", "Hi"]
for backend in ("torch", "triton"):
    e = LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32", num_blocks=32,
                               max_num_batched_tokens=16, attention_backend=backend))
    ids = [e.tokenizer.encode(p) for p in prompts]
    e.generate(ids[:1], SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True))  # warm the cache
    res = e.generate(ids, SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))
    out[backend] = [r.token_ids for r in res]
    out[backend + "_name"] = e.runner.backend.name
print(json.dumps(out))
"""


def test_engine_on_triton_backend_matches_torch(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(repo))
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "ckpt")], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["triton_name"] == "triton" and out["torch_name"] == "torch"
    assert out["triton"] == out["torch"]
