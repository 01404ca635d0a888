"""One request cannot fail the others, wait forever, or starve another group.

Each test here failed on the engine before the fix: an out-of-vocabulary stop token id raised in the
sampler and failed the whole step; pinned blocks let a request in that could never fit, which then
preempted itself every step; admissions were first-come (or longest-hit) across all tenants.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from engine import (
    AsyncEngine,
    EngineConfig,
    EngineDeadError,
    InvalidRequestError,
    RequestFailedError,
    SamplingParams,
)
from engine.block_manager import BlockManager
from engine.fairness import FairShare
from engine.sampler import Sampler
from engine.scheduler import Scheduler
from engine.sequence import Sequence
from tests.engine.conftest import greedy

MAX_STEPS = 2000


def _chat(engine, text: str) -> list[int]:
    return engine.tokenizer.apply_chat_template([{"role": "user", "content": text}])


def _drain(engine) -> dict[str, list]:
    outs: dict[str, list] = {}
    for _ in range(MAX_STEPS):
        if not engine.has_unfinished():
            return outs
        for out in engine.step():
            outs.setdefault(out.request_id, []).append(out)
        engine.scheduler.check_invariants()
    raise AssertionError("the engine did not finish its requests")


def _tokens(outs: list) -> list[int]:
    return [t for o in outs for t in o.token_ids]


def test_out_of_vocabulary_stop_token_is_refused(engine):
    vocab = engine.model_config.vocab_size
    ids = _chat(engine, "Hi")
    with pytest.raises(InvalidRequestError) as err:
        engine.add_request("bad", ids, greedy(4, min_tokens=2, stop_token_ids=[vocab + 5]))
    assert err.value.param == "stop_token_ids"
    engine.add_request("edge", ids, greedy(2, min_tokens=1, stop_token_ids=[vocab - 1]))
    assert _drain(engine)["edge"][-1].finish_reason == "length"


def test_a_failing_sampler_fails_only_its_request(engine):
    victim_ids = _chat(engine, "Count from one to twenty.")
    alone = engine.generate([victim_ids], greedy(16, ignore_eos=True))[0].token_ids
    engine.add_request("victim", victim_ids, greedy(16, ignore_eos=True))
    bad = engine.add_request("attacker", _chat(engine, "Hello"), greedy(16, min_tokens=8))
    bad.params.stop_token_ids = [10**9]  # slipped past validation: the sampler will raise for it
    outs = _drain(engine)
    assert outs["attacker"][-1].finish_reason == "error" and outs["attacker"][-1].error
    assert _tokens(outs["victim"]) == alone


def test_a_failing_forward_pass_fails_only_its_request(engine):
    victim_ids = _chat(engine, "Name three colours.")
    alone = engine.generate([victim_ids], greedy(12, ignore_eos=True))[0].token_ids
    engine.add_request("victim", victim_ids, greedy(12, ignore_eos=True))
    bad = engine.add_request("attacker", _chat(engine, "Hello there"), greedy(4))
    bad.token_ids[3] = 10**9  # an embedding index out of range, for this sequence only
    outs = _drain(engine)
    assert outs["attacker"][-1].finish_reason == "error"
    assert _tokens(outs["victim"]) == alone


def test_deadline_ends_a_running_and_a_waiting_request(engine):
    engine.reconfigure(max_num_seqs=1)
    ids = _chat(engine, "Tell me a long story about the sea.")
    soon = time.monotonic() + 0.5
    engine.add_request("running", ids, greedy(2000, ignore_eos=True), deadline=soon)
    engine.add_request("queued", ids, greedy(4), deadline=soon)  # never admitted: one slot only
    outs = _drain(engine)
    assert outs["running"][-1].finish_reason == "timeout" and len(_tokens(outs["running"])) > 0
    assert outs["queued"][-1].finish_reason == "timeout" and _tokens(outs["queued"]) == []


def test_pinned_blocks_cannot_starve_a_request(engine):
    engine.reconfigure(num_blocks=40)
    pinned = [[11 + i] * 160 for i in range(2)]  # 2 x 10 blocks pinned for good
    for i, p in enumerate(pinned):
        engine.add_request(f"pin{i}", p, greedy(1), pin=True)
    _drain(engine)
    assert engine.block_manager.num_pinned_blocks() == 20
    big = [5] * 400  # 25 blocks: fits the pool of 40, not the 20 unpinned
    with pytest.raises(InvalidRequestError) as err:
        engine.add_request("big", big, greedy(8))
    assert err.value.code == "context_length_exceeded"
    # One that hits a pinned prefix may use those pinned blocks.
    engine.add_request("shares", pinned[0] + [6] * 150, greedy(2))
    assert _drain(engine)["shares"][-1].finish_reason == "length"
    engine.unpin_all()


def test_pins_taken_after_admission_end_the_request_instead_of_looping(engine):
    engine.reconfigure(num_blocks=30)
    engine.add_request("grows", [5] * 200, greedy(200, ignore_eos=True))  # 13 blocks, up to 25
    engine.step()
    engine.add_request("pin", [9] * 200, greedy(1), pin=True)  # pins 12 blocks once it finishes
    outs = _drain(engine)
    assert outs["grows"][-1].finish_reason == "error"
    assert "never be scheduled" in outs["grows"][-1].error
    assert engine.unpin_all() == 12


class _FailsFor(Sampler):
    """The real sampler, with a fault injected for one request id (what validation cannot foresee)."""

    def __init__(self, request_id: str) -> None:
        super().__init__()
        self.request_id = request_id

    def __call__(self, logits, seqs, eos_ids):
        if any(s.request_id == self.request_id for s in seqs):
            raise RuntimeError("injected sampler fault")
        return super().__call__(logits, seqs, eos_ids)


async def test_async_stream_of_a_failed_request_raises_alone(engine):
    sampler, engine.sampler = engine.sampler, _FailsFor("attacker")
    a = AsyncEngine(engine)
    a.start()
    try:
        params = greedy(10, ignore_eos=True)
        victim = asyncio.create_task(_collect(a, "victim", _chat(engine, "Name a fruit."), params))
        with pytest.raises(RequestFailedError, match="injected sampler fault"):
            await _collect(a, "attacker", _chat(engine, "Hi"), params)
        assert len(await victim) == 10
        assert a.health().ok and a.health().num_faults == 0
    finally:
        a.shutdown()
        engine.sampler = sampler


async def _collect(a: AsyncEngine, rid: str, ids: list[int], params: SamplingParams) -> list[int]:
    return [t async for out in a.generate(rid, ids, params) for t in out.token_ids]


def test_fair_admission_across_groups():
    """A flood of group A's requests queued first: group B's later request is admitted next."""
    bm = BlockManager(1000, 16)
    sched = Scheduler(EngineConfig(max_num_seqs=64, max_num_batched_tokens=200), bm)
    flood = [Sequence(f"a{i}", [1000 + i] * 100, 100, SamplingParams(), group="A") for i in range(20)]
    for seq in flood:
        sched.add(seq)
    first = sched.schedule()
    sched.postprocess(first)
    late = Sequence("b", [7] * 100, 100, SamplingParams(), group="B")
    sched.add(late)
    batch = sched.schedule()
    assert late in batch.seqs, "B's request waited behind A's flood"
    sched.check_invariants()


def test_weights_share_admissions():
    """Two backlogged groups, weights 3 and 1: admitted prompt tokens split about 3:1."""
    bm = BlockManager(4000, 16)
    sched = Scheduler(EngineConfig(max_num_seqs=1000, max_num_batched_tokens=100), bm)
    for i in range(60):
        sched.add(Sequence(f"h{i}", [2000 + i] * 50, 50, SamplingParams(), group="heavy", weight=3.0))
        sched.add(Sequence(f"l{i}", [9000 + i] * 50, 50, SamplingParams(), group="light", weight=1.0))
    admitted = {"heavy": 0, "light": 0}
    for _ in range(20):
        batch = sched.schedule()
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            if n > 1:
                admitted[seq.group] += n
        sched.postprocess(batch)
    ratio = admitted["heavy"] / admitted["light"]
    assert 2.0 <= ratio <= 4.0, admitted


def test_erasing_a_salt_drops_its_pinned_and_cached_blocks_only(engine):
    engine.reconfigure(num_blocks=60)
    for salt in ("gone", "kept"):
        engine.add_request(f"pin-{salt}", [21] * 64, greedy(1), salt=salt, pin=True)
        engine.add_request(f"cache-{salt}", [22] * 64, greedy(1), salt=salt)
    _drain(engine)
    bm = engine.block_manager
    assert bm.num_pinned_blocks() == 8
    assert engine.erase_salt("gone") == 8  # 4 pinned + 4 cached
    assert bm.num_pinned_blocks() == 4 and bm.num_cached_blocks == 4
    engine.add_request("again", [21] * 64 + [3], greedy(1), salt="gone")
    assert _drain(engine)["again"][-1].usage.cached_tokens == 0
    engine.unpin_all()


async def test_engine_faults_end_live_requests_and_show_in_health(engine):
    """A step that fails for every sequence is the engine's fault: its requests end, the loop goes
    on with an empty engine, and repeated faults make health() say so."""
    a = AsyncEngine(engine)
    a.start()
    runner_execute = engine.runner.execute

    def broken(batch):
        raise RuntimeError("device lost")

    try:
        engine.runner.execute = broken
        for i in range(3):
            with pytest.raises(EngineDeadError, match="device lost"):
                await _collect(a, f"f{i}", _chat(engine, "Hi"), greedy(4))
        health = a.health()
        assert not health.ok and health.num_faults == 3 and "device lost" in health.last_fault
        engine.runner.execute = runner_execute
        assert len(await _collect(a, "after", _chat(engine, "Hi"), greedy(4, ignore_eos=True))) == 4
        assert (await a.get_stats()).used_blocks == 0
    finally:
        engine.runner.execute = runner_execute
        a.shutdown()


def test_a_flooding_groups_chunks_yield_to_a_less_served_arrival():
    """A's long prompts are mid-prefill when B arrives: B's prefill takes the budget first."""
    bm = BlockManager(1000, 16)
    sched = Scheduler(EngineConfig(max_num_seqs=64, max_num_batched_tokens=256), bm)
    for i in range(4):
        sched.add(Sequence(f"a{i}", [3000 + i] * 600, 600, SamplingParams(), group="A"))
    sched.postprocess(sched.schedule())  # A's first chunk: A is running a long prefill now
    late = Sequence("b", [7] * 200, 200, SamplingParams(), group="B")
    sched.add(late)
    batch = sched.schedule()
    assert batch.seqs[0] is late and batch.num_new_tokens[0] == 200
    sched.check_invariants()


def test_a_less_served_groups_later_chunks_do_not_wait_behind_a_flood():
    """B's prompt needs several chunks: each goes ahead of A's long prefill, so B's prefill ends in
    the few steps its own tokens take. Failed before weighted fair ordering (B took 19 steps): once B
    was running and nothing waited, every chunk went in admission order, A's first."""
    bm = BlockManager(2000, 16)
    sched = Scheduler(EngineConfig(max_num_seqs=64, max_num_batched_tokens=10_000), bm)
    for i in range(4):
        sched.add(Sequence(f"a{i}", [3000 + i] * 3000, 600, SamplingParams(), group="A"))
    sched.postprocess(sched.schedule())  # a0-a2 decode now; a3 has 2,000 prompt tokens to go
    sched.max_num_batched_tokens = 128
    late = Sequence("b", [7] * 400, 400, SamplingParams(), group="B")
    sched.add(late)
    num_steps = 0
    while late.num_computed_tokens < late.num_prompt_tokens and num_steps < 40:
        sched.postprocess(sched.schedule())
        sched.check_invariants()
        num_steps += 1
    assert num_steps <= 4, f"B's 400-token prefill took {num_steps} steps"  # 3 decodes + 125 tokens a step


def test_a_returning_group_leads_by_at_most_one_step():
    """A group back from idle starts one step's budget below the least-served active group; a group
    that stays active earns no further lead, and an idle group's past service is forgotten."""
    fair = FairShare(arrival_lead=100.0)
    fair.activate("A")
    fair.charge("A", 1000, 1.0)
    fair.activate("B")
    assert fair.counter("B") == fair.counter("A") - 100.0
    fair.activate("B")  # a second live request: no second lead
    assert fair.counter("B") == fair.counter("A") - 100.0
    fair.charge("B", 500, 1.0)
    for _ in range(2):
        fair.deactivate("B")
    fair.activate("B")
    assert fair.counter("B") == fair.counter("A") - 100.0  # level again, not 1,000 ahead
