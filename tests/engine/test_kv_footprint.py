"""KV waste and the KV share of memory (issue 13, "the seeds' KV claims, live").

The engine's numbers are checked against a count made another way: over the physical blocks the
running sequences hold, each filled as far as the furthest sequence's computed tokens reach into it
(shared prefix blocks are counted once). Waste stays under one block per sequence, the bound paged
allocation promises.
"""

from __future__ import annotations

from engine import AsyncEngine, LLMEngine
from tests.engine.conftest import greedy

SHARED_PREFIX = "The lighthouse keeper wrote in the log every evening, noting the wind and the ships. " * 3


def physical_slots(engine: LLMEngine) -> tuple[int, int]:
    """(allocated, unfilled) slots over the distinct blocks the running sequences hold."""
    bs = engine.block_manager.block_size
    filled: dict[int, int] = {}
    for seq in engine.scheduler.running:
        for i, block_id in enumerate(seq.block_table):
            tokens = min(bs, max(0, seq.num_computed_tokens - i * bs))
            filled[block_id] = max(filled.get(block_id, 0), tokens)
    return len(filled) * bs, sum(bs - n for n in filled.values())


def test_waste_is_the_unfilled_share_of_the_blocks_live_requests_hold(engine):
    footprints = AsyncEngine(engine)  # not started: kv_footprint reads under the engine lock
    tok = engine.tokenizer
    engine.add_request("first", tok.encode(SHARED_PREFIX + "Monday:"), greedy(20))
    engine.step()  # the first prompt's full blocks get their names
    engine.add_request("second", tok.encode(SHARED_PREFIX + "Tuesday, a storm:"), greedy(20))
    engine.add_request("third", tok.encode("A short one."), greedy(20))
    num_shared_seen = 0
    while engine.has_unfinished():
        engine.step()
        fp = footprints.kv_footprint()
        assert (fp.allocated_slots, fp.unfilled_slots) == physical_slots(engine)
        assert fp.unfilled_slots < max(1, engine.scheduler.num_running) * engine.block_manager.block_size
        assert fp.waste_perc == (fp.unfilled_slots / fp.allocated_slots if fp.allocated_slots else 0.0)
        num_shared_seen = max(num_shared_seen, engine.block_manager.num_shared_blocks())
    assert num_shared_seen > 0, "the second request never shared the first one's prefix blocks"
    fp = footprints.kv_footprint()
    assert fp.allocated_slots == fp.unfilled_slots == 0 and fp.waste_perc == 0.0


def test_memory_share_is_the_kv_pools_bytes_over_weights_and_pool(engine):
    fp = AsyncEngine(engine).kv_footprint()
    runner = engine.runner
    assert fp.kv_bytes == runner.num_blocks * runner.bytes_per_block
    weights = {id(t): t for t in [*runner.model.parameters(), *runner.model.buffers()]}
    assert fp.weight_bytes == sum(t.numel() * t.element_size() for t in weights.values())
    assert fp.memory_share == fp.kv_bytes / (fp.kv_bytes + fp.weight_bytes)
    assert 0 < fp.memory_share < 1
