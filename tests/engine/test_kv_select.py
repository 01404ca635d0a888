"""The dense harness that compares recompute selections (appliance/bench/kv_select.py) against the
engine: its full recompute is the engine's forward, its head selection is the engine's chunk reuse."""

from __future__ import annotations

import torch

from appliance.bench.kv_reuse_quality import RecordingSampler
from appliance.bench.kv_select import (
    Evaluation,
    Reuse,
    SelectionResult,
    decode,
    deviation_chooser,
    head_tokens,
    moved_reuse,
    prefill,
    store_chunk,
)
from engine.chunk_kv import ChunkSpec
from tests.engine.test_chunk_reuse import GREEDY, pieces, prompt_of, run


def test_full_recompute_gives_the_engines_tokens(engine):
    ids, spans = prompt_of(pieces(engine), ["a", "b", "c"])
    expected = run(engine, "prefix", ids, ChunkSpec(spans, "prefix"))
    model = engine.runner.model
    tokens, logprobs = decode(model, prefill(model, ids), GREEDY.max_tokens, frozenset())
    assert tokens == expected and len(logprobs) == len(tokens)


def test_head_selection_gives_the_engines_chunk_reuse_tokens(engine):
    """Chunks stored in one order, reused in another with their first 4 tokens computed again: the
    engine (paged, moves, frontier) and the harness (dense) produce the same answer."""
    engine.scheduler.chunk_recompute_tokens = 4
    p, model = pieces(engine), engine.runner.model
    stored_ids, stored_spans = prompt_of(p, ["a", "b", "c"])
    run(engine, "store", stored_ids, ChunkSpec(stored_spans, "chunks"))
    ids, spans = prompt_of(p, ["c", "a", "b"])
    sampler = engine.sampler
    engine.sampler = recorder = RecordingSampler(sampler)
    try:
        expected = run(engine, "reuse", ids, ChunkSpec(spans, "chunks"))
    finally:
        engine.sampler = sampler
    assert engine.stats().chunk_hit_tokens > 0
    stored = {tuple(stored_ids[s:e]): store_chunk(model, stored_ids, (s, e)) for s, e in stored_spans}
    reuse = moved_reuse(model, ids, list(spans), stored)
    assert int(reuse.may_reuse.sum()) == sum(e - s for s, e in spans)
    state = prefill(model, ids, reuse, head_tokens(list(spans), reuse, lambda n: 4))
    tokens, logprobs = decode(model, state, GREEDY.max_tokens, frozenset())
    assert tokens == expected
    engine_logprobs = torch.stack(recorder.logprobs["reuse"])
    torch.testing.assert_close(torch.stack(logprobs), engine_logprobs, rtol=0, atol=2e-3)
    full = prefill(model, ids)  # the approximation is real: not the full-recompute distribution
    assert not torch.allclose(model.compute_logits(state.last_hidden), model.compute_logits(full.last_hidden))
    assert 0 < state.compute_share < 1


def test_the_deviation_choice_keeps_the_farthest_reusable_tokens_and_every_other_token():
    shape = (6, 2, 4)
    stored_k, stored_v = torch.zeros(shape), torch.zeros(shape)
    k, v = torch.zeros(shape), torch.zeros(shape)
    k[1] += 0.1
    v[2] += 3.0
    k[3] += 1.0
    k[5] += 9.0  # the farthest, but it has no stored KV: kept anyway, not counted in the budget
    may_reuse = torch.tensor([True, True, True, True, True, False])
    keep = deviation_chooser(2)(k, v, stored_k, stored_v, may_reuse)
    assert keep.tolist() == [False, False, True, True, False, True]


def test_with_every_token_chosen_both_selections_are_full_recompute(smol):
    """The evaluation's own check: a share of 1 computes every token with either selection (the
    deviation one from its choice on), so KL is 0 and top-1 agreement is 1."""
    p, model = pieces(smol), smol.runner.model
    stored_ids, stored_spans = prompt_of(p, ["a", "b"])
    ids, spans = prompt_of(p, ["b", "a"])
    results = {(s, 1.0): SelectionResult(selection=s, share=1.0) for s in ("head", "deviation")}
    evaluation = Evaluation(model, frozenset(), lambda t: " ".join(map(str, t)), 6, results)
    for span in stored_spans:
        evaluation.store(stored_ids, span)
    evaluation.question(ids, list(spans), ("no such answer",))
    for result in results.values():
        assert result.num_positions == 6 and result.num_top1 == 6
        assert abs(result.kl) < 1e-5  # the prefill and the step-by-step decode differ by rounding
    assert results[("head", 1.0)].compute_share == 1.0


def test_a_chunk_without_stored_kv_is_computed():
    may_reuse = torch.tensor([False] * 2 + [True] * 3 + [False] * 3)  # the second chunk was not stored
    reuse = Reuse(torch.zeros(1, 8, 1, 2), torch.zeros(1, 8, 1, 2), may_reuse)
    computed = head_tokens([(2, 5), (5, 7)], reuse, lambda n: 1)
    assert computed.tolist() == [True, True, True, False, False, True, True, True]
