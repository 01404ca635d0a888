"""Prefix hits found at the start of a step stay valid while earlier admissions of the same step evict.

The scheduler looks up every waiting request's cached prefix once, then admits requests one after
another. An earlier admission may evict a cached block (free list empty: the LRU block is reused for
new contents). A later request of the same step must not attach that block from its earlier lookup:
two sequences would then hold one physical block that only one of them reached through its name.
"""

from __future__ import annotations

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
