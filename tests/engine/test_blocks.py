"""Blocks are never leaked or double-freed: unit checks plus a hypothesis property test."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.block_manager import BlockManager
from engine.sampling_params import SamplingParams as SP
from engine.sequence import Sequence
from tests.engine.conftest import write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> LLMEngine:
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "llama", "llama3")
    return LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32", num_blocks=64))


def test_free_returns_every_block():
    bm = BlockManager(8, 4)
    seq = Sequence("a", list(range(10)), 10, SP())
    assert bm.can_admit(seq, [], 10)
    bm.allocate_prefix(seq, [])
    bm.allocate_slots(seq, 10)
    assert len(seq.block_table) == 3 and bm.num_used_blocks == 3
    seq.num_computed_tokens = 10
    bm.commit_full_blocks(seq)
    bm.free(seq)
    bm.check_invariants()
    assert bm.num_used_blocks == 0 and bm.num_cached_blocks == 2 and bm.num_free_blocks == 6
    assert bm.flush() == 2 and bm.num_free_blocks == 8


def test_double_free_is_caught():
    bm = BlockManager(4, 4)
    seq = Sequence("a", [1, 2, 3], 3, SP())
    bm.allocate_prefix(seq, [])
    bm.allocate_slots(seq, 3)
    table = list(seq.block_table)
    bm.free(seq)
    seq.block_table = table
    with pytest.raises(AssertionError):
        bm.free(seq)


ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 120), st.integers(1, 12), st.integers(0, 3)),
    st.tuples(st.just("abort"), st.integers(0, 30), st.just(0), st.just(0)),
    st.tuples(st.just("step"), st.integers(1, 4), st.just(0), st.just(0)),
    st.tuples(st.just("flush"), st.just(0), st.just(0), st.just(0)),
), min_size=1, max_size=40)


def check_served_blocks(engine: LLMEngine) -> None:
    """Every named block a live request holds carries exactly that request's tokens."""
    bm = engine.block_manager
    for seq in engine.scheduler.running:
        for i, block_id in enumerate(seq.block_table):
            block = bm.blocks[block_id]
            assert block.ref_count > 0
            if block.block_hash is not None:
                assert block.token_ids == tuple(seq.token_ids[i * bm.block_size:(i + 1) * bm.block_size])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedule=ops, num_blocks=st.integers(9, 40), budget=st.sampled_from([8, 32, 128]),
       caching=st.booleans())
def test_random_schedules_never_leak(tiny, schedule, num_blocks, budget, caching):
    tiny.reconfigure(num_blocks=num_blocks, max_num_batched_tokens=budget, max_num_seqs=6,
                     enable_prefix_caching=caching)
    bm = tiny.block_manager
    shared_prefix = list(range(100, 140))
    ids = []
    for op, a, b, c in schedule:
        if op == "add":
            prompt = (shared_prefix[: a // 2] + [7 + c] * a)[: max(1, min(a, num_blocks * 16 - 16))]
            rid = f"q{len(ids)}"
            limit = num_blocks * 16 - len(prompt)
            if limit < 1:
                continue
            tiny.add_request(rid, prompt, SamplingParams(max_tokens=min(b, limit), temperature=0.0,
                                                         ignore_eos=True), salt=str(c % 2))
            ids.append(rid)
        elif op == "abort" and ids:
            tiny.abort(ids[a % len(ids)])
        elif op == "flush":
            tiny.flush_prefix_cache()
            bm.check_invariants()
        else:
            for _ in range(a):
                tiny.step()
                bm.check_invariants()
                check_served_blocks(tiny)
    while tiny.has_unfinished():
        tiny.step()
        bm.check_invariants()
        check_served_blocks(tiny)
    assert bm.num_used_blocks == 0
    bm.flush()
    assert bm.num_free_blocks == bm.num_blocks
