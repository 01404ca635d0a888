"""What the server reads of a checkpoint before loading it: location, shape, the weights' memory."""

from __future__ import annotations

import pytest
import torch

from engine import CheckpointError, LLMEngine
from engine.checkpoint_info import inspect_checkpoint, locate_checkpoint, weights_sha256
from engine.loader import bundled_model_path
from tests.engine.conftest import write_tiny_checkpoint


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.nbytes for t in [*model.parameters(), *model.buffers()])


def test_the_estimate_matches_the_loaded_fp32_weights(smol: LLMEngine):
    info = inspect_checkpoint(None, "none")
    assert (info.format, info.path, info.quantization) == ("gguf", str(bundled_model_path()), "none")
    actual = weight_bytes(smol.runner.model)
    assert abs(info.weight_bytes(4) - actual) / actual < 0.01


def test_an_hf_directory_is_measured_by_its_config_and_hashed_by_its_files(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "tiny", "llama3")
    info = inspect_checkpoint(str(ckpt), "int8")
    assert (info.format, info.quantization, info.config.num_layers) == ("hf", "int8", 2)
    assert info.weight_bytes(4) < inspect_checkpoint(str(ckpt), "none").weight_bytes(4)
    first = weights_sha256(*locate_checkpoint(str(ckpt)))
    shard = sorted(ckpt.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x01")
    assert weights_sha256(*locate_checkpoint(str(ckpt))) != first


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "missing.gguf", "does not exist"),
    (lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt", "not a .gguf file"),
    (lambda d: (d / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 64) and d / "bad.gguf", "cannot read GGUF"),
])
def test_what_cannot_be_served_is_refused_in_one_line(tmp_path, make, message):
    with pytest.raises(CheckpointError, match=message):
        inspect_checkpoint(str(make(tmp_path)))
