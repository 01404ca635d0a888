"""The optional int8 KV cache: about twice the blocks of a 16-bit cache, outputs close to fp32's."""

from __future__ import annotations

import pytest

from engine import EngineConfig, LLMEngine
from tests.engine.conftest import greedy


@pytest.fixture(scope="module")
def int8_engine() -> LLMEngine:
    return LLMEngine(EngineConfig(device="cpu", dtype="float32", kv_cache_gib=0.25, kv_cache_dtype="int8"))


def test_int8_blocks_per_gib(int8_engine):
    c = int8_engine.model_config
    bf16_bytes = 2 * c.num_layers * 16 * c.num_kv_heads * c.head_dim * 2
    assert bf16_bytes / int8_engine.runner.bytes_per_block > 1.85  # capacity vs a bf16 cache
    k, _, ks, _ = int8_engine.runner.kv_caches[0]
    assert k.dtype.is_floating_point is False and ks.shape == k.shape[:3]


def test_int8_greedy_close_to_fp32(int8_engine, engine, prompts, hf_reference):
    chosen = [i for i, p in enumerate(prompts) if len(p) < 60]
    outs = int8_engine.generate([prompts[i] for i in chosen], greedy())
    same = sum(o.token_ids[:6] == hf_reference[i][:6] for o, i in zip(outs, chosen, strict=True))
    assert same >= 0.7 * len(chosen), f"only {same}/{len(chosen)} agree on the first 6 tokens"
    int8_engine.block_manager.check_invariants()
    assert int8_engine.block_manager.num_live_blocks == 0
