"""Bad input raises a clear error; the CLI prints one line and exits non-zero."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import pytest

from engine import CheckpointError, EngineConfig, InvalidRequestError, LLMEngine, SamplingParams
from engine.loader import bundled_model_path, load_checkpoint
from tests.engine.conftest import greedy


@pytest.mark.parametrize("kw", [
    {"max_tokens": 0}, {"max_tokens": -3}, {"max_tokens": 1.5}, {"temperature": -0.1},
    {"temperature": math.nan}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}, {"min_tokens": -1},
    {"min_tokens": 9, "max_tokens": 4}, {"seed": "x"}, {"stop": [""]}, {"stop_token_ids": [-1]},
    {"max_tokens": True}, {"seed": 2**64}, {"seed": -1}, {"top_k": 2**40},
])
def test_invalid_sampling_values(kw):
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(**kw)
    assert err.value.param in kw


def test_missing_model_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.gguf")


def test_corrupt_gguf(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError):
        load_checkpoint(junk)
    truncated = tmp_path / "truncated.gguf"
    with open(bundled_model_path(), "rb") as f:
        truncated.write_bytes(f.read(3_000_000))
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)


def test_directory_without_model(tmp_path):
    with pytest.raises(CheckpointError):
        LLMEngine(EngineConfig(model=str(tmp_path)))


def test_prompt_longer_than_context(engine):
    too_long = [100] * (engine.max_model_len + 1)
    with pytest.raises(InvalidRequestError) as err:
        engine.add_request("long", too_long, greedy(4))
    assert err.value.code == "context_length_exceeded" and str(engine.max_model_len) in str(err.value)
    with pytest.raises(InvalidRequestError):  # fits alone, but not with max_tokens
        engine.add_request("long2", [100] * (engine.max_model_len - 2), greedy(8))
    with pytest.raises(InvalidRequestError):
        engine.add_request("empty", [], greedy(4))
    with pytest.raises(InvalidRequestError):
        engine.add_request("vocab", [10**9], greedy(4))
    assert not engine.has_unfinished()


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("appliance", path=os.path.dirname(sys.executable)) or "appliance"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args", [
    ["generate", "hi", "--max-tokens", "0"],
    ["generate", "hi", "--temperature", "-1"],
    ["generate", "hi", "--model", "/nonexistent/model.gguf"],
])
def test_cli_bad_input_one_line(args):
    r = _cli(*args)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("appliance: error:"), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_cli_corrupt_gguf(tmp_path):
    junk = tmp_path / "bad.gguf"
    junk.write_bytes(b"GGUF" + os.urandom(1000))
    r = _cli("generate", "hi", "--model", str(junk))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "bad.gguf" in r.stderr
