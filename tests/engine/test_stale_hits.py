"""Prefix hits found at the start of a step stay valid while earlier admissions of the same step evict.

The scheduler looks up every waiting request's cached prefix once, then admits requests one after
another. An earlier admission may evict a cached block (free list empty: the LRU block is reused for
new contents). A later request of the same step must not attach that block from its earlier lookup:
two sequences would then hold one physical block that only one of them reached through its name.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence


def _seq(name: str, tokens: list[int]) -> Sequence:
    return Sequence(name, tokens, len(tokens), SamplingParams(max_tokens=1))


def _run_to_cache(sched: Scheduler, seq: Sequence) -> None:
    """Compute a prompt (no model: the KV contents do not matter here), name its blocks, finish it."""
    sched.add(seq)
    batch = sched.schedule()
    assert batch.seqs == [seq]
    sched.postprocess(batch)
    sched.remove(seq)


def _pool_with_lru() -> tuple[Scheduler, BlockManager]:
    """7 blocks of 2 tokens: Q=[7,8] oldest in the LRU, then S=[9,10], then P=[1,2][3,4]; 3 free."""
    bm = BlockManager(7, 2)
    sched = Scheduler(EngineConfig(max_num_seqs=8, max_num_batched_tokens=64), bm)
    for name, tokens in (("q", [7, 8, 0]), ("s", [9, 10, 0]), ("p", [1, 2, 3, 4, 0])):
        _run_to_cache(sched, _seq(name, tokens))
    assert bm.num_cached_blocks == 4 and bm.num_free_blocks == 3
    return sched, bm


def test_eviction_in_the_same_step_does_not_serve_a_stale_hit():
    sched, _ = _pool_with_lru()
    # A hits P (2 blocks) and needs 4 new blocks: 3 free plus the LRU block Q, evicted for A's tokens.
    a = _seq("a", [1, 2, 3, 4, *range(20, 28)])
    # B hits Q (1 block) according to the lookup taken before A's admission.
    b = _seq("b", [7, 8, 30])
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    assert a in batch.seqs
    sched.check_invariants()  # no physical block is shared unless both holders reached it by its name
    if b in batch.seqs:
        assert b.num_computed_tokens == 0, "B's hit on Q was evicted by A: it must compute [7, 8] again"
        assert not set(a.block_table) & set(b.block_table)


def test_shared_blocks_are_reached_by_name():
    """Two requests with the same prefix in one step share its blocks legitimately."""
    sched, _ = _pool_with_lru()
    a, b = _seq("a", [1, 2, 3, 4, 5]), _seq("b", [1, 2, 3, 4, 6])
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    assert set(batch.seqs) == {a, b}
    assert a.block_table[:2] == b.block_table[:2]
    sched.check_invariants()


# --- property: random bursts of arrivals over shared paragraphs, small pools ------------------------
PARAGRAPHS = [list(range(10 * i + 1, 10 * i + 7)) for i in range(5)]

bursts = st.lists(st.tuples(
    st.lists(st.lists(st.integers(0, len(PARAGRAPHS) - 1), min_size=1, max_size=3), min_size=1, max_size=6),
    st.integers(0, 4),  # steps before the next burst
), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(arrivals=bursts, num_blocks=st.integers(8, 30), block_size=st.sampled_from([2, 4]),
       budget=st.sampled_from([4, 16, 64]), max_tokens=st.integers(1, 6))
def test_random_bursts_share_blocks_only_by_name(arrivals, num_blocks, block_size, budget, max_tokens):
    """Every step, right after scheduling: no physical block is held by two sequences unless both
    reached it through the same name (the scheduler's own check, which the stale-hit bug breaks)."""
    bm = BlockManager(num_blocks, block_size)
    sched = Scheduler(EngineConfig(max_num_seqs=8, max_num_batched_tokens=budget), bm)
    n = 0
    for prompts, num_steps in arrivals:
        for order in prompts:
            tokens = [t for i in order for t in PARAGRAPHS[i]] + [99]
            if bm.blocks_needed(len(tokens) + max_tokens) <= num_blocks:
                sched.add(Sequence(f"r{n}", tokens, len(tokens), SamplingParams(max_tokens=max_tokens),
                                   group=f"t{n % 2}", salt=""))
                n += 1
        for _ in range(num_steps):
            _sim_step(sched)
    for _ in range(500):
        if not sched.has_work():
            break
        _sim_step(sched)
    assert not sched.has_work() and bm.num_used_blocks == 0


def _sim_step(sched: Scheduler) -> None:
    """A step without a model: schedule, check, advance, append a token to those that sample."""
    batch = sched.schedule()
    sched.check_invariants()
    for seq in batch.unschedulable:
        sched.remove(seq)
    sched.postprocess(batch)
    for seq in batch.seqs:
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(seq.num_tokens % 7)
            if seq.num_output_tokens >= seq.params.max_tokens:
                sched.remove(seq)
    sched.check_invariants()
