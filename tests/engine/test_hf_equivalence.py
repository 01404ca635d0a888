"""Greedy output is token-identical to HF transformers (same GGUF, fp32, CPU)."""

from __future__ import annotations

from engine import LLMEngine
from tests.engine.conftest import greedy


def run_staggered(engine: LLMEngine, prompts: list[list[int]], every: int = 2) -> dict[str, list[int]]:
    """Add one request every `every` steps while the others run: arrivals mid-batch."""
    pending = [(f"r{i}", p) for i, p in enumerate(prompts)]
    outputs: dict[str, list[int]] = {rid: [] for rid, _ in pending}
    step = 0
    while pending or engine.has_unfinished():
        if pending and step % every == 0:
            rid, p = pending.pop(0)
            engine.add_request(rid, p, greedy())
        for out in engine.step():
            outputs[out.request_id] += out.token_ids
        step += 1
    return outputs


def test_one_at_a_time_matches_hf(engine, prompts, hf_reference):
    for ids, expected in zip(prompts, hf_reference, strict=True):
        [got] = engine.generate([ids], greedy())
        assert got.token_ids == expected, engine.tokenizer.decode(ids)[-80:]


def test_continuous_batch_with_chunked_prefill_matches_hf(engine, prompts, hf_reference):
    # A 256-token budget splits every long prompt into chunks that share steps with decodes.
    engine.reconfigure(max_num_batched_tokens=256, enable_prefix_caching=False)
    outputs = run_staggered(engine, prompts)
    stats = engine.stats()
    assert stats.num_steps > len(prompts)
    for i, expected in enumerate(hf_reference):
        assert outputs[f"r{i}"] == expected, f"prompt {i}"


def test_preempted_sequence_keeps_its_greedy_output(engine, prompts, hf_reference):
    # Chat prompts take 3 blocks each at admission and need a 4th after ~11 generated tokens: with 12
    # blocks for 7 of them, decodes run out of blocks and the newest running sequence is preempted.
    chosen = [i for i, p in enumerate(prompts) if 33 <= len(p) <= 47][:7]
    assert len(chosen) == 7
    engine.reconfigure(num_blocks=12, max_num_batched_tokens=512, enable_prefix_caching=False)
    outputs = run_staggered(engine, [prompts[i] for i in chosen], every=1)
    assert engine.stats().num_preemptions > 0
    for k, i in enumerate(chosen):
        assert outputs[f"r{k}"] == hf_reference[i], f"prompt {i}"
