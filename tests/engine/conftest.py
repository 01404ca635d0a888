"""Engine fixtures: the bundled SmolLM2 loaded once, HF transformers as the reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.loader import bundled_model_path

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
MAX_NEW = 12


@pytest.fixture(scope="session")
def smol() -> LLMEngine:
    """One fp32 CPU engine for the session; tests reconfigure it instead of reloading weights."""
    return LLMEngine(EngineConfig(device="cpu", dtype="float32", kv_cache_gib=0.5, max_num_seqs=32))


@pytest.fixture
def engine(smol: LLMEngine) -> LLMEngine:
    """The shared engine, reset to defaults with an empty cache; checks no block leaked after."""
    for request_id in list(smol.requests):  # left by a test that failed half-way
        smol.abort(request_id)
    smol.reconfigure(num_blocks=10**9, max_num_batched_tokens=2048, max_num_seqs=32,
                     enable_prefix_caching=True)
    yield smol
    leftover = list(smol.requests)
    for request_id in leftover:
        smol.abort(request_id)
    assert not leftover, f"requests left running: {leftover}"
    smol.block_manager.check_invariants()
    assert smol.block_manager.num_live_blocks == 0


@pytest.fixture(scope="session")
def hf_model():
    from transformers import AutoModelForCausalLM

    path = bundled_model_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval()


def _doc_text(name: str, chars: int) -> str:
    return (SHARED / "data" / "squad-rag" / "docs" / name).read_text()[:chars]


def build_prompts(tok) -> list[list[int]]:
    """≥ 20 varied prompts: raw and chat, short and > 1,000 tokens, non-ASCII."""
    raw = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "1, 2, 3, 4, 5,", "Les élèves ont appris que", "東京は日本の", "I love 🍕 because",
           "Q: What is 12 times 12?\nA:", "<html><body><h1>", "The opposite of hot is"]
    chats = ["What is the capital of France?", "Write a haiku about the sea.",
             "Explain photosynthesis in one sentence.", "List three prime numbers.",
             "¿Cómo estás?", "What is 2+2?", "Give me a name for a cat."]
    prompts = [tok.encode(p) for p in raw]
    prompts += [tok.apply_chat_template([{"role": "user", "content": c}]) for c in chats]
    long_raw = _doc_text("Normans.txt", 4700) + "\n\nIn summary,"
    prompts.append(tok.encode(long_raw))
    doc = _doc_text("Packet_switching.txt", 5000)
    question = doc + "\n\nWhat is packet switching?"
    prompts.append(tok.apply_chat_template([{"role": "user", "content": question}]))
    doc2 = _doc_text("Yuan_dynasty.txt", 4000)
    prompts.append(tok.apply_chat_template([
        {"role": "system", "content": "Answer from the document only."},
        {"role": "user", "content": doc2 + "\n\nWho founded the Yuan dynasty?"}]))
    return prompts


@pytest.fixture(scope="session")
def prompts(smol: LLMEngine) -> list[list[int]]:
    ps = build_prompts(smol.tokenizer)
    assert len(ps) >= 20 and sum(len(p) > 1000 for p in ps) >= 3
    return ps


@pytest.fixture(scope="session")
def hf_reference(hf_model, prompts) -> list[list[int]]:
    """HF transformers greedy continuations, one prompt at a time (no padding anywhere)."""
    outs = []
    with torch.inference_mode():
        for ids in prompts:
            x = torch.tensor([ids])
            y = hf_model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=MAX_NEW,
                                  do_sample=False, eos_token_id=2, pad_token_id=2)
            outs.append(y[0, len(ids):].tolist())
    return outs


def greedy(max_tokens: int = MAX_NEW, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw)


def write_tiny_checkpoint(path: Path, arch: str, seed: int = 0) -> Path:
    """A random-weight HF checkpoint (sharded safetensors + config.json + the SmolLM2 tokenizer)."""
    import transformers

    from engine.tokenizer import _gguf_tokenizer

    torch.manual_seed(seed)
    common = dict(vocab_size=49152, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  initializer_range=0.15, tie_word_embeddings=False)
    if arch == "llama3":
        config = transformers.LlamaConfig(**common, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
        model = transformers.LlamaForCausalLM(config)
    elif arch == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    elif arch == "mistral":
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**common))
    else:
        raise ValueError(arch)
    model.save_pretrained(str(path), max_shard_size="2MB")
    _gguf_tokenizer(bundled_model_path()).save_pretrained(str(path))
    return path
