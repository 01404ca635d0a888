"""Quantized engines against a reference built from the same quantized weights.

The reference is HF transformers with every linear weight replaced by our layout's fp32
dequantization (which test_quant_layouts.py checks against the `gguf` package's). Our quantized
matmuls run with bf16 activations, so a token may differ where the reference's top two logits are
within that rounding; every token we pick must be the reference's top-1 or within 0.1 of it, and
nearly all must be its top-1.
"""

from __future__ import annotations

import copy

import pytest
import torch

from engine import EngineConfig, LLMEngine
from engine.loader import load_checkpoint, quant_target
from engine.quant.apply import weight_bytes
from engine.quant.layouts import Int4Weight, Int8Weight
from tests.engine.conftest import greedy

PROMPTS = ["The capital of France is", "Once upon a time, in a small village,",
           # over 96 tokens, so the prefill takes the dense path (Int8Linear/Int4Linear.dense_min_rows)
           "The lighthouse at Varnholm was built in 1872 from granite quarried on the island itself. Its "
           "lamp burned paraffin until 1931, when an electric lamp replaced it, and the last keeper left "
           "in 1989 when the light was automated. Visitors can climb its 112 steps in summer, and the "
           "keeper's cottage at its foot now holds a small museum of lenses, logbooks and the brass "
           "fog bell that rang every thirty seconds in poor weather for more than sixty years. "
           "Question: when was the light automated? Answer:"]


def reference_model(hf_model, mode: str):
    ckpt = load_checkpoint(None, mode)
    state = {name: (w.dequantize() if isinstance(w, Int4Weight | Int8Weight) else w)
             for name, w in ckpt.weights.items()}
    model = copy.deepcopy(hf_model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    model.tie_weights()
    return model.eval()


@pytest.mark.parametrize("mode", ["auto", "int8"])
def test_greedy_tokens_are_the_references_top1(hf_model, mode):
    engine = LLMEngine(EngineConfig(device="cpu", dtype="float32", kv_cache_gib=0.05, quantization=mode))
    assert engine.runner.model_config.tie_word_embeddings
    ref = reference_model(hf_model, "int4" if mode == "auto" else mode)
    num_top1 = num_tokens = 0
    for prompt in PROMPTS:
        ids = engine.tokenizer.encode(prompt)
        [got] = engine.generate([ids], greedy(12, ignore_eos=True))
        with torch.inference_mode():
            logits = ref(torch.tensor([ids + got.token_ids])).logits[0, len(ids) - 1:-1]
        picked = logits.gather(1, torch.tensor(got.token_ids)[:, None])[:, 0]
        assert (logits.max(dim=1).values - picked <= 0.1).all(), prompt
        num_top1 += int((logits.argmax(dim=1) == torch.tensor(got.token_ids)).sum())
        num_tokens += len(got.token_ids)
    assert num_top1 >= 0.95 * num_tokens


def test_auto_loads_the_bundled_q4_1_as_int4_at_a_fifth_of_fp32():
    engine = LLMEngine(EngineConfig(device="cpu", dtype="float32", kv_cache_gib=0.05, quantization="auto"))
    c = engine.model_config
    proj = c.num_layers * c.hidden_size * (2 * c.num_heads * c.head_dim + 2 * c.num_kv_heads * c.head_dim
                                           + 3 * c.intermediate_size)
    head = c.vocab_size * c.hidden_size
    # int4: half a byte per weight + bf16 scale and zero per 32; head/embedding: one int8 tensor.
    expected = proj // 2 + proj // 32 * 4 + head + c.vocab_size * (4 + 2)
    norms_and_rope = (2 * c.num_layers + 1) * c.hidden_size * 4 + c.head_dim // 2 * 4
    assert weight_bytes(engine.runner.model) == expected + norms_and_rope
    assert weight_bytes(engine.runner.model) < (proj + head) * 4 / 5


@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_random_shapes_load_quantized_and_generate(mode):
    engine = LLMEngine(EngineConfig(model="random:tiny", device="cpu", dtype="float32", kv_cache_gib=0.05,
                                    quantization=mode))
    [got] = engine.generate([[5, 6, 7, 8]], greedy(6, ignore_eos=True))
    assert len(got.token_ids) == 6
    kinds = {type(m).__name__ for m in engine.runner.model.modules()}
    assert {"Int8Embedding", "Int8Linear"} <= kinds and ("Int4Linear" in kinds) == (mode == "int4")


@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_hf_safetensors_quantize_on_load(tmp_path, mode):
    from safetensors.torch import load_file

    from tests.engine.conftest import write_tiny_checkpoint

    path = write_tiny_checkpoint(tmp_path / "qwen2", "qwen2")  # q/k/v carry biases
    ckpt = load_checkpoint(str(path), mode)
    floats = {}
    for f in sorted(path.glob("*.safetensors")):
        floats.update(load_file(str(f)))
    for name, w in ckpt.weights.items():
        target = quant_target(name, mode)  # projections: mode; embedding and head: int8; rest float
        if target is None:
            assert isinstance(w, torch.Tensor) and torch.equal(w, floats[name])
            continue
        assert isinstance(w, Int4Weight if target == "int4" else Int8Weight)
        step = w.scale.repeat_interleave(32, dim=1) if target == "int4" else w.scale[:, None]
        assert ((w.dequantize() - floats[name]).abs() <= step / 2 + 1e-6).all(), name
    assert sum(isinstance(w, Int4Weight | Int8Weight) for w in ckpt.weights.values()) == 2 + 2 * 7
    engine = LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32", kv_cache_gib=0.05,
                                    quantization=mode))
    [got] = engine.generate([[5, 6, 7, 8]], greedy(6, ignore_eos=True))
    assert len(got.token_ids) == 6
