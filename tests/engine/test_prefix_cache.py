"""Prefix sharing: same outputs as without it, tenant isolation, dedupe, pins, eviction order."""

from __future__ import annotations

from appliance.bench.workload import rag_requests
from engine.block_manager import BlockManager
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from tests.engine.conftest import greedy
from tests.engine.test_hf_equivalence import run_staggered


def rag_prompts(engine, n: int) -> list[list[int]]:
    return [engine.tokenizer.apply_chat_template(r.messages) for r in rag_requests(n, pool_size=5)]


def test_outputs_equal_with_cache_on_and_off(engine):
    prompts = rag_prompts(engine, 6)
    prompts += [p[:-7] for p in prompts[:2]]  # prefixes that end part-way through a block
    engine.reconfigure(enable_prefix_caching=False, max_num_batched_tokens=384)
    off = run_staggered(engine, prompts, every=1)
    engine.reconfigure(enable_prefix_caching=True, max_num_batched_tokens=384)
    on = run_staggered(engine, prompts, every=1)
    assert on == off
    stats = engine.stats()
    assert stats.prefix_hit_tokens > 0.4 * sum(map(len, prompts))
    # Again under block pressure: cached prefix blocks get evicted and reused for other contents.
    engine.reconfigure(enable_prefix_caching=True, num_blocks=max(map(len, prompts)) // 16 + 6,
                       max_num_batched_tokens=384)
    pressured = run_staggered(engine, prompts, every=1)
    assert pressured == off
    assert engine.stats().num_evictions > 0


def test_cached_tokens_reported_per_request(engine):
    [a] = rag_prompts(engine, 1)
    first = engine.generate([a], greedy(2))[0]
    second = engine.generate([a], greedy(2))[0]
    assert first.usage.cached_tokens == 0
    assert second.usage.cached_tokens == (len(a) - 1) // 16 * 16
    assert second.token_ids == first.token_ids


def test_tenant_isolation_and_public_prefix(engine):
    [p] = rag_prompts(engine, 1)
    params = greedy(2)
    engine.add_request("a1", p, params, salt="tenant-a")
    _drain(engine)
    engine.add_request("b1", p, params, salt="tenant-b")
    assert _drain(engine)["b1"].cached_tokens == 0  # B never hits A's blocks
    engine.add_request("a2", p, params, salt="tenant-a")
    assert _drain(engine)["a2"].cached_tokens > 0
    # A public prefix (e.g. the system prompt) is shared across tenants, the rest is not.
    engine.flush_prefix_cache()
    public = 160
    engine.add_request("a3", p, params, salt="tenant-a", public_prefix_len=public)
    _drain(engine)
    engine.add_request("b3", p, params, salt="tenant-b", public_prefix_len=public)
    assert _drain(engine)["b3"].cached_tokens == public


def test_arrivals_with_same_uncached_prefix_compute_it_once(engine):
    prompts = rag_prompts(engine, 6)
    system_len = _common_prefix_len(prompts)
    assert system_len > 200
    before = engine.stats().prompt_tokens_total
    for i, p in enumerate(prompts):
        engine.add_request(f"d{i}", p, greedy(1))
    _drain(engine)
    computed = engine.stats().prompt_tokens_total - before
    # Without dedupe each request would compute the shared system prompt itself.
    assert computed <= sum(map(len, prompts)) - (len(prompts) - 1) * (system_len // 16 * 16)


def test_pinned_prefix_survives_flush_and_pressure(engine):
    [p] = rag_prompts(engine, 1)
    engine.add_request("pin", p, greedy(1), pin=True)
    _drain(engine)
    pinned = engine.block_manager.num_pinned_blocks()
    assert pinned == (len(p)) // 16
    engine.flush_prefix_cache()
    stats = engine.stats()
    assert stats.used_blocks == 0 and stats.cached_blocks == pinned
    filler = [[7 + i] * 400 for i in range(8)]  # more distinct blocks than the pool keeps
    engine.generate(filler, greedy(1))
    engine.add_request("hit", p, greedy(1))
    assert _drain(engine)["hit"].cached_tokens == (len(p) - 1) // 16 * 16
    assert engine.unpin_all() == pinned


def test_eviction_takes_free_blocks_first_then_lru():
    bm = BlockManager(6, 2)
    a = _full_seq(bm, "a", [1, 2, 3, 4])  # 2 named blocks
    bm.free(a)
    b = _full_seq(bm, "b", [5, 6])
    bm.free(b)
    assert bm.num_reusable_blocks == 3 and bm.num_free_blocks == 3
    c = Sequence("c", [9, 9, 9, 9, 9, 9], 6, SamplingParams())
    bm.allocate_prefix(c, [])
    bm.allocate_slots(c, 6)  # takes the 3 free blocks: nothing evicted
    assert bm.num_reusable_blocks == 3
    d = Sequence("d", [8, 8], 2, SamplingParams())
    bm.allocate_prefix(d, [])
    bm.allocate_slots(d, 2)  # must evict: the least recently used is a's tail (freed tail-first)
    hits_a = bm.lookup_prefix(Sequence("a2", [1, 2, 3, 4, 0], 5, SamplingParams()))
    hits_b = bm.lookup_prefix(Sequence("b2", [5, 6, 0], 3, SamplingParams()))
    assert len(hits_a) == 1 and len(hits_b) == 1
    bm.check_invariants()


def _full_seq(bm: BlockManager, rid: str, tokens: list[int]) -> Sequence:
    seq = Sequence(rid, tokens, len(tokens), SamplingParams())
    bm.allocate_prefix(seq, bm.lookup_prefix(seq))
    bm.allocate_slots(seq, len(tokens) - seq.num_computed_tokens)
    seq.num_computed_tokens = len(tokens)
    bm.commit_full_blocks(seq)
    return seq


def _common_prefix_len(prompts: list[list[int]]) -> int:
    n = 0
    while all(len(p) > n and p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n


def _drain(engine) -> dict:
    usage = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                usage[out.request_id] = out.usage
    return usage
