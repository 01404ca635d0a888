"""HF checkpoint directories load and match HF transformers (tiny random models written here)."""

from __future__ import annotations

import pytest
import torch

from engine import EngineConfig, LLMEngine, SamplingParams
from tests.engine.conftest import write_tiny_checkpoint

PROMPTS = ["The capital of France is", "def add(a, b):", "Once upon a time there was a long " * 12]


@pytest.mark.parametrize("arch", ["llama3", "qwen2", "mistral"])
def test_hf_dir_matches_transformers(tmp_path, arch):
    import transformers

    path = write_tiny_checkpoint(tmp_path / arch, arch)
    assert len(list(path.glob("*.safetensors"))) > 1, "the checkpoint should be sharded"
    ours = LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32", kv_cache_gib=0.05))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    prompts = [ours.tokenizer.encode(p) for p in PROMPTS]
    results = ours.generate(prompts, params)
    for ids, got in zip(prompts, results, strict=True):
        x = torch.tensor([ids])
        with torch.inference_mode():
            ref = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=10, min_new_tokens=10,
                              do_sample=False, pad_token_id=0)
        assert got.token_ids == ref[0, len(ids):].tolist()


def test_hf_dir_logits_match(tmp_path):
    import transformers

    path = write_tiny_checkpoint(tmp_path / "q", "qwen2", seed=3)
    ours = LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32", kv_cache_gib=0.05))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = ours.tokenizer.encode("A quick check of the last position's logits")
    ours.add_request("x", ids, SamplingParams(max_tokens=1, temperature=0.0))
    batch = ours.scheduler.schedule()
    logits, _ = ours.runner.execute(batch)
    with torch.inference_mode():
        ref = hf(torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(logits[0], ref, rtol=1e-4, atol=1e-4)
    ours.abort("x")
