"""What a checkpoint is before it is loaded: its shape, its architecture, the memory its weights need.

Loading a model takes seconds to minutes and its memory at once; a server that adds a model version
beside a live one must refuse a file it cannot use (unreadable, not Llama-family, too big for the
memory left) before it spends either. This reads only metadata: the GGUF header and tensor table
(memory-mapped, no tensor data decoded) or an HF directory's config.json.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from engine.config import ModelConfig
from engine.loader import (
    CheckpointError,
    bundled_model_path,
    gguf_auto_mode,
    gguf_config,
    hf_config,
    random_checkpoint,
)

# Bytes per parameter of each weight layout (scales included): int8 keeps one fp32 scale per row,
# int4 one fp32 scale and offset per 32 weights.
LAYOUT_BYTES = {"int8": 1.0, "int4": 0.5 + 8 / 32}
HASH_CHUNK = 1 << 22


@dataclass(slots=True, frozen=True)
class CheckpointInfo:
    path: str  # the file or directory that will be loaded ("random:..." shapes as given)
    format: str  # gguf | hf | random
    config: ModelConfig
    quantization: str  # what the weights will load as: none | int8 | int4 ("auto" resolved)

    def weight_bytes(self, dtype_bytes: int) -> int:
        """Memory of the loaded weights; float layers at dtype_bytes per parameter."""
        c = self.config
        attn = c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
        mlp = 3 * c.hidden_size * c.intermediate_size
        norms = c.num_layers * 2 * c.hidden_size + c.hidden_size
        embed = c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
        if self.quantization == "none":
            per_param = {"proj": dtype_bytes, "embed": dtype_bytes}
        else:
            per_param = {"proj": LAYOUT_BYTES[self.quantization], "embed": LAYOUT_BYTES["int8"]}
        total = (c.num_layers * (attn + mlp) * per_param["proj"] + embed * per_param["embed"]
                 + norms * dtype_bytes)
        return int(total)


def locate_checkpoint(source: str | None) -> tuple[str, str]:
    """(path, format) of what `source` names, without reading it: the GGUF file or the HF directory."""
    if source is not None and source.startswith("random:"):
        return source, "random"
    path = Path(source) if source else bundled_model_path()
    if not path.exists():
        raise CheckpointError(f"model path does not exist: {path}")
    if path.is_dir():
        if (path / "config.json").exists():
            return str(path), "hf"
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise CheckpointError(f"{path} holds neither config.json + safetensors nor a single .gguf file")
        path = ggufs[0]
    if path.suffix != ".gguf":
        raise CheckpointError(f"{path} is not a .gguf file or a checkpoint directory")
    return str(path), "gguf"


def inspect_checkpoint(source: str | None, quantization: str = "none") -> CheckpointInfo:
    """The checkpoint's metadata, or CheckpointError saying in one line why it cannot be served."""
    path, fmt = locate_checkpoint(source)
    if fmt == "random":
        ckpt = random_checkpoint(path, quantization)
        return CheckpointInfo(path, fmt, ckpt.config, ckpt.quantization)
    return _hf_info(Path(path), quantization) if fmt == "hf" else _gguf_info(Path(path), quantization)


def _gguf_info(path: Path, quantization: str) -> CheckpointInfo:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # the gguf package raises assorted errors on a damaged file
        raise CheckpointError(f"cannot read GGUF file {path}: {exc}") from exc
    config = gguf_config(reader, path)
    names = {t.name for t in reader.tensors}
    config.tie_word_embeddings = "output.weight" not in names
    mode = gguf_auto_mode(reader) if quantization == "auto" else quantization
    return CheckpointInfo(str(path), "gguf", config, mode)


def _hf_info(path: Path, quantization: str) -> CheckpointInfo:
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path / 'config.json'}: {exc}") from exc
    config = hf_config(raw, path)
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(f"no .safetensors files in {path}")
    return CheckpointInfo(str(path), "hf", config, "none" if quantization == "auto" else quantization)


def weights_sha256(path: str, fmt: str) -> str:
    """Content hash of the weight files (the GGUF file, or the directory's safetensors in name order);
    for a random shape, of its name."""
    digest = hashlib.sha256()
    if fmt == "random":
        digest.update(path.encode())
        return digest.hexdigest()
    location = Path(path)
    files = [location] if location.is_file() else sorted(location.glob("*.safetensors"))
    for f in files:
        with open(f, "rb") as fh:
            while block := fh.read(HASH_CHUNK):
                digest.update(block)
    return digest.hexdigest()
