"""Chunk KV reuse (engine/chunk_kv.py) with the bundled model: stored chunks moved to new positions."""

from __future__ import annotations

import pytest
import torch

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.chunk_kv import ChunkSpec, rotate_keys
from engine.model import apply_rotary
from engine.sampling_params import InvalidRequestError
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence

GREEDY = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
TEXTS = {
    "sys": "You answer questions from the context.\nContext:\n",
    "a": " The lighthouse at Varnholm was built in 1872 from granite quarried on the island itself. Its lamp "
         "burned paraffin until 1931, when an electric lamp replaced it.",
    "b": " The keeper's cottage at its foot now holds a small museum of lenses, logbooks and the brass fog "
         "bell that rang every thirty seconds in poor weather.",
    "c": " Visitors can climb its 112 steps in summer; the light was automated in 1989 and the last keeper "
         "left the island that autumn.",
    "q": "\nQuestion: when was the lamp changed to electric? Answer:",
}


def pieces(engine: LLMEngine) -> dict[str, list[int]]:
    hf = engine.tokenizer.hf
    out = {name: hf.encode(text, add_special_tokens=False) for name, text in TEXTS.items()}
    out["sep"] = hf.encode("\n\n", add_special_tokens=False)
    return out


def prompt_of(p: dict[str, list[int]], chunks: list[str]) -> tuple[list[int], tuple[tuple[int, int], ...]]:
    ids, spans = list(p["sys"]), []
    for name in chunks:
        spans.append((len(ids), len(ids) + len(p[name])))
        ids += p[name] + p["sep"]
    return ids + p["q"], tuple(spans)


def run(engine: LLMEngine, request_id: str, ids: list[int], chunks: ChunkSpec, salt: str = "") -> list[int]:
    engine.add_request(request_id, ids, GREEDY, salt=salt, chunks=chunks)
    tokens: list[int] = []
    while engine.has_unfinished():
        for out in engine.step():
            tokens += out.token_ids
        engine.scheduler.check_invariants()
    return tokens


def test_keys_rotated_by_a_delta_are_the_keys_rotated_at_the_new_position(smol):
    rotary, head_dim = smol.runner.model.rotary, smol.model_config.head_dim
    raw = torch.randn(40, 3, head_dim)
    for start, delta in [(0, 37), (100, -60), (5, 1000)]:
        old = torch.arange(start, start + 40)
        at_old = apply_rotary(raw, *rotary(old, torch.float32))
        at_new = apply_rotary(raw, *rotary(old + delta, torch.float32))
        # fp32 angles (position * inv_freq) are off by up to ~1e-4 rad near position 1000, in the table too
        torch.testing.assert_close(rotate_keys(at_old, delta, rotary.inv_freq), at_new, rtol=0, atol=5e-4)


def test_a_chunk_computed_alone_at_another_position_has_the_moved_keys(smol):
    """RoPE attention depends on position differences only, so a chunk computed by itself at
    positions d.. has the keys of the same chunk computed at 0.., rotated by d; V is unchanged."""
    runner = smol.runner
    ids = pieces(smol)["a"]
    caches = {}
    for delta in (0, 300):
        seq = Sequence(f"alone-{delta}", list(ids), len(ids), GREEDY, block_table=list(range(4)))
        batch = ScheduledBatch([seq], [len(ids)])
        kv = runner._allocate_kv(4)
        with torch.inference_mode():
            tokens, positions, meta, _, _ = runner.prepare(batch)
            runner.model(tokens, positions + delta, meta, kv, runner.backend)
        caches[delta] = kv
    n, inv_freq = len(ids), runner.model.rotary.inv_freq
    for (k0, v0), (k1, v1) in zip(caches[0], caches[300], strict=True):
        flat = lambda t: t.reshape(-1, *t.shape[2:])[:n]  # noqa: E731
        torch.testing.assert_close(rotate_keys(flat(k0), 300, inv_freq), flat(k1), rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(flat(v0), flat(v1), rtol=1e-3, atol=1e-3)


def test_reuse_in_the_same_context_and_position_is_token_identical(engine):
    """A chunk stored after the same system prompt, moved back to the same position (delta 0) with
    nothing recomputed: the same KV as computing it, so the same tokens as prefix-only."""
    engine.reconfigure(enable_prefix_caching=False)  # only the chunk store can serve the chunk
    engine.scheduler.chunk_recompute_tokens = 0
    p = pieces(engine)
    first, spans1 = prompt_of(p, ["a", "b"])
    second, spans2 = prompt_of(p, ["a", "c"])
    run(engine, "store", first, ChunkSpec(spans1, "chunks"))
    assert engine.stats().chunk_blocks > 0
    expected = run(engine, "prefix", second, ChunkSpec(spans2, "prefix"))
    got = run(engine, "reuse", second, ChunkSpec(spans2, "chunks"))
    assert engine.stats().chunk_hit_tokens == spans2[0][1] - spans2[0][0]  # chunk a, moved in whole
    assert got == expected


def test_recomputing_every_token_is_prefix_only(engine):
    engine.scheduler.chunk_recompute_tokens = 10_000
    p = pieces(engine)
    ids, spans = prompt_of(p, ["a", "b"])
    swapped, spans_swapped = prompt_of(p, ["b", "a"])
    run(engine, "store", ids, ChunkSpec(spans, "chunks"))
    engine.flush_prefix_cache()
    expected = run(engine, "prefix", swapped, ChunkSpec(spans_swapped, "prefix"))
    engine.flush_prefix_cache()
    assert run(engine, "chunks", swapped, ChunkSpec(spans_swapped, "chunks")) == expected
    assert engine.stats().chunk_hit_tokens == 0


def test_chunks_reused_in_another_order_and_position(engine, monkeypatch):
    engine.scheduler.chunk_recompute_tokens = 4
    p = pieces(engine)
    ids, spans = prompt_of(p, ["a", "b", "c"])
    run(engine, "store", ids, ChunkSpec(spans, "chunks"))
    swapped, spans_swapped = prompt_of(p, ["c", "a", "b"])
    moves = []
    execute = engine.runner.execute
    monkeypatch.setattr(engine.runner, "execute", lambda batch: (
        moves.extend(m for ops in batch.chunk_ops.values() for m in ops.moves), execute(batch))[1])
    tokens = run(engine, "reuse", swapped, ChunkSpec(spans_swapped, "chunks"))
    # each chunk moved from where "store" computed it to where this prompt has it, its head skipped
    stored_at = dict(zip("abc", (s for s, _ in spans), strict=True))
    now_at = dict(zip("cab", (s for s, _ in spans_swapped), strict=True))
    assert sorted((m.dst_start, m.offset, m.delta) for m in moves) == sorted(
        (now_at[c] + 4, 4, now_at[c] - stored_at[c]) for c in "abc")
    stats = engine.stats()
    assert stats.chunk_hit_tokens == sum(e - s - 4 for s, e in spans_swapped)
    assert stats.chunk_recomputed_tokens == 4 * len(spans_swapped)
    assert stats.chunk_query_tokens == 2 * sum(e - s for s, e in spans)  # "store" and "reuse"
    assert stats.chunk_prefix_hit_tokens == 0  # the system prompt is shorter than a block
    assert stats.chunk_served_perc == stats.chunk_hit_tokens / stats.chunk_query_tokens
    assert len(tokens) == GREEDY.max_tokens
    # blocks from the first reused region on hold approximate KV: none became a prefix block
    hits = engine.block_manager.lookup_prefix(Sequence("probe", list(swapped), len(swapped), GREEDY))
    assert len(hits) * engine.config.block_size <= spans_swapped[0][0] + 4


def test_a_prompt_of_several_stored_chunks_is_prefilled_in_one_step(engine):
    """Its three chunks are moved in and the runs of tokens between them computed in one forward
    pass (an attention row per run), so the first token comes after one step; before, every chunk
    cost the prompt a step of its own (four here), each waiting behind the whole batch."""
    engine.scheduler.chunk_recompute_tokens = 4
    p = pieces(engine)
    ids, spans = prompt_of(p, ["a", "b", "c"])
    run(engine, "store", ids, ChunkSpec(spans, "chunks"))
    swapped, spans_swapped = prompt_of(p, ["c", "a", "b"])
    engine.add_request("reuse", swapped, GREEDY, chunks=ChunkSpec(spans_swapped, "chunks"))
    first = engine.step()
    engine.scheduler.check_invariants()
    assert [len(out.token_ids) for out in first if out.request_id == "reuse"] == [1]
    assert engine.stats().chunk_hit_tokens == sum(e - s - 4 for s, e in spans_swapped)
    while engine.has_unfinished():
        engine.step()


def test_tenants_share_chunk_kv_only_for_public_chunks(engine):
    engine.scheduler.chunk_recompute_tokens = 4
    p = pieces(engine)
    ids, spans = prompt_of(p, ["a", "b"])
    swapped, spans_swapped = prompt_of(p, ["b", "a"])
    run(engine, "t1", ids, ChunkSpec(spans, "chunks"), salt="tenant-1")
    run(engine, "t2", swapped, ChunkSpec(spans_swapped, "chunks"), salt="tenant-2")
    assert engine.stats().chunk_hit_tokens == 0
    run(engine, "t1-again", swapped, ChunkSpec(spans_swapped, "chunks"), salt="tenant-1")
    assert engine.stats().chunk_hit_tokens > 0
    before = engine.stats().chunk_hit_tokens
    run(engine, "pub-1", ids, ChunkSpec(spans, "chunks", public=True), salt="tenant-1")
    # a third tenant (tenant-2 would hit its own exact prefix of this very prompt first)
    run(engine, "pub-3", swapped, ChunkSpec(spans_swapped, "chunks", public=True), salt="tenant-3")
    assert engine.stats().chunk_hit_tokens > before


def test_held_chunks_survive_block_pressure(engine):
    """Many chunk-reusing requests in a small pool: preemptions and evictions never take a chunk a
    running request still has to move in (check_invariants after every step), and all finish."""
    engine.scheduler.chunk_recompute_tokens = 4
    p = pieces(engine)
    ids, spans = prompt_of(p, ["a", "b", "c"])
    run(engine, "store", ids, ChunkSpec(spans, "chunks"))
    engine.reconfigure(num_blocks=40, max_num_batched_tokens=64)
    engine.scheduler.chunk_recompute_tokens = 4
    run(engine, "store-again", ids, ChunkSpec(spans, "chunks"))
    orders = [["c", "a", "b"], ["b", "c", "a"], ["a", "c", "b"], ["b", "a", "c"]] * 2
    for i, order in enumerate(orders):
        prompt, order_spans = prompt_of(p, order)
        engine.add_request(f"r{i}", prompt, GREEDY, chunks=ChunkSpec(order_spans, "chunks"))
    finished = set()
    while engine.has_unfinished():
        for out in engine.step():
            assert out.finish_reason != "error", out.error
            if out.finished:
                finished.add(out.request_id)
        engine.scheduler.check_invariants()
    assert finished == {f"r{i}" for i in range(len(orders))}
    assert engine.scheduler.num_preemptions > 0 and engine.stats().chunk_hit_tokens > 0


def test_a_pinned_chunk_outlives_flushes_and_eviction_until_unpinned(engine):
    engine.reconfigure(num_blocks=24)
    p = pieces(engine)
    ids, spans = prompt_of(p, ["a", "b", "c"])
    run(engine, "store", ids, ChunkSpec(spans, "chunks"))
    chunk = {name: ids[s:e] for name, (s, e) in zip("abc", spans, strict=True)}
    bm = engine.block_manager
    assert engine.pin_chunk("", chunk["a"]) == len(bm.lookup_chunk("", chunk["a"]).block_ids)
    assert engine.pin_chunk("", chunk["a"]) == 0  # already pinned
    assert engine.pin_chunk("", p["q"]) == 0  # not a stored chunk
    engine.flush_prefix_cache()
    assert bm.lookup_chunk("", chunk["b"]) is None and bm.lookup_chunk("", chunk["a"]) is not None
    for i in range(3):  # unrelated prompts that need most of the pool: every cached block is evicted
        run(engine, f"filler-{i}", [1000 + 7 * i + j % 50 for j in range(240)], ChunkSpec())
    assert bm.num_evictions > 0 and bm.lookup_chunk("", chunk["a"]) is not None
    engine.scheduler.chunk_recompute_tokens = 4
    swapped, spans_swapped = prompt_of(p, ["c", "a"])
    run(engine, "reuse", swapped, ChunkSpec(spans_swapped, "chunks"))
    assert engine.stats().chunk_hit_tokens == len(chunk["a"]) - 4
    assert engine.unpin_all() > 0 and bm.num_pinned_blocks() == 0
    bm.check_invariants()


def test_what_a_prompt_reuses_does_not_depend_on_the_prefix_cache(engine):
    """Stored (pinned) chunks, each prompt first alone after a flush, then again after prompts that
    left their exact heads in the prefix cache: the same chunk tokens are moved in and the answers
    are the same. (Before, a prefix hit into a chunk's head made that chunk computed in full, so the
    next prompt's hit reached into the chunk after it: answers depended on what had run before.)"""
    engine.scheduler.chunk_recompute_tokens = 8  # chunk a's head ends past the first block boundary
    p = pieces(engine)
    ids, spans = prompt_of(p, ["a", "b", "c"])
    run(engine, "store", ids, ChunkSpec(spans, "chunks"))
    for s, e in spans:
        assert engine.pin_chunk("", ids[s:e]) > 0
    orders = [["a", "b", "c"], ["a", "b"], ["a", "c", "b"], ["b", "c"]]

    def reused(name: str, order: list[str]) -> tuple[list[int], int]:
        prompt, order_spans = prompt_of(p, order)
        before = engine.stats().chunk_hit_tokens
        tokens = run(engine, name, prompt, ChunkSpec(order_spans, "chunks"))
        return tokens, engine.stats().chunk_hit_tokens - before

    alone = []
    for i, order in enumerate(orders):
        engine.flush_prefix_cache()
        alone.append(reused(f"alone-{i}", order))
    for repeat in range(2):
        for i, order in enumerate(orders):
            assert reused(f"again-{repeat}-{i}", order) == alone[i], (repeat, order)
    assert engine.stats().chunk_prefix_hit_tokens > 0  # the "again" runs hit chunk heads


def test_a_waiting_request_whose_chunks_are_stored_goes_first(engine):
    """Among a group's waiting requests the scheduler prefers the one with more reusable KV: stored
    chunks count like prefix hits (one slot: the later, warm request is admitted first)."""
    engine.scheduler.chunk_recompute_tokens = 4
    p = pieces(engine)
    ids, spans = prompt_of(p, ["a", "b"])
    run(engine, "store", ids, ChunkSpec(spans, "chunks"))
    engine.scheduler.max_num_seqs = 1
    cold, cold_spans = prompt_of(p, ["c"])
    warm, warm_spans = prompt_of(p, ["b", "a"])
    engine.add_request("cold", cold, GREEDY, chunks=ChunkSpec(cold_spans, "chunks"))
    engine.add_request("warm", warm, GREEDY, chunks=ChunkSpec(warm_spans, "chunks"))
    engine.step()
    assert [seq.request_id for seq in engine.scheduler.running] == ["warm"]
    while engine.has_unfinished():
        engine.step()


@pytest.mark.parametrize("spans", [((5, 5),), ((10, 20), (15, 30)), ((0, 10**6),), ((20, 10),)])
def test_bad_chunk_spans_are_refused(engine, spans):
    ids, _ = prompt_of(pieces(engine), ["a"])
    with pytest.raises(InvalidRequestError, match="chunk spans"):
        engine.add_request("bad", ids, GREEDY, chunks=ChunkSpec(spans, "chunks"))
    with pytest.raises(InvalidRequestError, match="kv_reuse"):
        engine.add_request("bad", ids, GREEDY, chunks=ChunkSpec((), "everything"))
    assert not engine.has_unfinished()


def test_an_int8_cache_refuses_chunk_reuse():
    engine = LLMEngine(EngineConfig(device="cpu", dtype="float32", kv_cache_gib=0.02, kv_cache_dtype="int8"))
    with pytest.raises(InvalidRequestError, match="float KV cache"):
        engine.add_request("x", [1, 2, 3, 4], GREEDY, chunks=ChunkSpec(((1, 2),), "chunks"))


def test_chat_prompt_spans_cover_the_chunk_texts(smol):
    """The RAG layer names chunks by text; their token spans lie inside the texts and the ids are the
    chat template's own."""
    from rag.prompt import build_rag_prompt
    from rag.types import Hit

    hits = [Hit(id=f"h{i}", doc_id=f"d{i}", source=f"docs/{name}.txt", chunk_index=0, text=TEXTS[name],
                score=1.0 - i / 10) for i, name in enumerate("abc")]
    prompt = build_rag_prompt(TEXTS["sys"], hits, "When was the lamp changed?")
    tok = smol.tokenizer
    ids, spans = tok.apply_chat_template_with_spans(prompt.messages(), list(prompt.chunk_texts))
    assert ids == tok.apply_chat_template(prompt.messages())
    assert len(spans) == 3
    for (start, end), text in zip(spans, prompt.chunk_texts, strict=True):
        inside = tok.hf.decode(ids[start:end])
        assert inside.strip() and inside.strip() in text and end - start >= len(tok.hf.encode(text)) - 2
    ChunkSpec(tuple(spans), "chunks").check(len(ids), can_reuse=True)
