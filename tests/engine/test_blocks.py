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
    st.tuples(st.just("burst"), st.integers(2, 6), st.integers(1, 8), st.integers(0, 63)),
    st.tuples(st.just("abort"), st.integers(0, 30), st.just(0), st.just(0)),
    st.tuples(st.just("step"), st.integers(1, 4), st.just(0), st.just(0)),
    st.tuples(st.just("flush"), st.just(0), st.just(0), st.just(0)),
), min_size=1, max_size=40)

# Paragraphs that prompts combine in many orders, so that prefixes are shared, evicted and revived.
PARAGRAPHS = [list(range(100 + 20 * i, 120 + 20 * i)) for i in range(4)]


def check_served_blocks(engine: LLMEngine) -> None:
    """Every named block a live request holds carries exactly that request's tokens."""
    bm = engine.block_manager
    for seq in engine.scheduler.running:
        for i, block_id in enumerate(seq.block_table):
            block = bm.blocks[block_id]
            assert block.ref_count > 0
            if block.block_hash is not None:
                assert block.token_ids == tuple(seq.token_ids[i * bm.block_size:(i + 1) * bm.block_size])


def check_step(engine: LLMEngine) -> None:
    engine.scheduler.check_invariants()  # includes: no block shared except through its name
    check_served_blocks(engine)


def _add(engine: LLMEngine, rid: str, prompt: list[int], max_tokens: int, salt: str, num_blocks: int) -> bool:
    prompt = prompt[: max(1, num_blocks * 16 - 16)]
    limit = num_blocks * 16 - len(prompt)
    if limit < 1:
        return False
    engine.add_request(rid, prompt, SamplingParams(max_tokens=min(max_tokens, limit), temperature=0.0,
                                                   ignore_eos=True), salt=salt)
    return True


def _burst_prompts(size: int, combo: int) -> list[list[int]]:
    """`size` prompts that arrive together, made of the paragraphs in orders picked by `combo`."""
    prompts = []
    for k in range(size):
        order = [(combo + k * j) % len(PARAGRAPHS) for j in range(1, 1 + (combo + k) % 3 + 1)]
        prompts.append([t for i in order for t in PARAGRAPHS[i]] + [7 + k])
    return prompts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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
            if _add(tiny, f"q{len(ids)}", shared_prefix[: a // 2] + [7 + c] * a, b, str(c % 2), num_blocks):
                ids.append(f"q{len(ids)}")
        elif op == "burst":  # simultaneous admissions: one step looks up all of them at once
            for k, prompt in enumerate(_burst_prompts(a, c)):
                if _add(tiny, f"q{len(ids)}", prompt, b, str((c + k) % 2), num_blocks):
                    ids.append(f"q{len(ids)}")
        elif op == "abort" and ids:
            tiny.abort(ids[a % len(ids)])
        elif op == "flush":
            tiny.flush_prefix_cache()
            bm.check_invariants()
        else:
            for _ in range(a):
                tiny.step()
                check_step(tiny)
    while tiny.has_unfinished():
        tiny.step()
        check_step(tiny)
    assert bm.num_used_blocks == 0
    bm.flush()
    assert bm.num_free_blocks == bm.num_blocks
