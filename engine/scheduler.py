"""Continuous batching: every step fills a token budget from running decodes, then prefill chunks.

Order within a step: running sequences that decode (one token each), then running sequences that are
part-way through a chunked prefill, then waiting sequences (cache-aware pick). When blocks run out, the
newest running sequence is preempted: its blocks are freed and it is recomputed later from its tokens
(prompt plus what it had generated), so its output is unchanged.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.sequence import Sequence, SequenceStatus

# Beyond this many waiting requests the pick is plain FCFS (scoring the queue would cost too much).
CACHE_AWARE_QUEUE_LIMIT = 64
# A waiting request older than this is taken next whatever its cache hits, so none starves.
MAX_WAIT_BEFORE_FCFS_S = 2.0


@dataclass(slots=True)
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    num_decodes: int = 0  # the first num_decodes entries schedule exactly one token
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def is_empty(self) -> bool:
        return not self.seqs


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager) -> None:
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.bm = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a finished or aborted sequence out and release its blocks at once."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.bm.free(seq)
        seq.status = SequenceStatus.FINISHED

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self._schedule_running(batch, self.max_num_batched_tokens)
        if not batch.preempted:
            self._schedule_waiting(batch, budget)
        assert batch.num_tokens <= self.max_num_batched_tokens
        return batch

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> int:
        decodes = [s for s in self.running if s.num_uncomputed_tokens == 1]
        chunks = [s for s in self.running if s.num_uncomputed_tokens > 1]
        for seq in decodes + chunks:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            n = self._fit(seq, min(seq.num_uncomputed_tokens, budget), batch)
            if n == 0:
                continue
            self.bm.allocate_slots(seq, n)
            self._add_to_batch(batch, seq, n)
            budget -= n
        return budget

    def _fit(self, seq: Sequence, n: int, batch: ScheduledBatch) -> int:
        """Shrink a prefill chunk to the free blocks, or preempt the newest until seq fits."""
        while not self.bm.can_append(seq, n):
            room = (len(seq.block_table) + self.bm.num_available_blocks) * self.bm.block_size
            if room - seq.num_computed_tokens >= 1 and n > 1:
                return room - seq.num_computed_tokens
            victim = self._pick_victim(seq, batch)
            self._preempt(victim)
            batch.preempted.append(victim)
            if victim is seq:
                return 0
        return n

    def _pick_victim(self, seq: Sequence, batch: ScheduledBatch) -> Sequence:
        """The newest running sequence not already given tokens this step (else seq itself)."""
        scheduled = set(map(id, batch.seqs))
        for victim in reversed(self.running):
            if victim is not seq and id(victim) not in scheduled:
                return victim if victim.arrival_time >= seq.arrival_time else seq
        return seq

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.bm.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _schedule_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        if not self.waiting:
            return
        inflight = self._inflight_hashes()
        for seq, cached in self._waiting_order():
            if budget == 0 or len(self.running) >= self.max_num_seqs:
                return
            if self._waits_for_inflight(seq, cached, inflight):
                continue  # another request is computing this prefix right now: reuse it next step
            n = min(seq.num_tokens - len(cached) * self.bm.block_size, budget)
            if not self.bm.can_admit(seq, cached, n):
                return
            self._admit(seq, cached, n, batch)
            inflight.update(seq.block_hashes[len(cached):])
            budget -= n

    def _admit(self, seq: Sequence, cached: list[int], n: int, batch: ScheduledBatch) -> None:
        self.waiting.remove(seq)
        self.bm.allocate_prefix(seq, cached)
        if seq.num_preemptions == 0:
            seq.num_cached_tokens = seq.num_computed_tokens
        self.bm.allocate_slots(seq, n)
        seq.status = SequenceStatus.RUNNING
        if seq.first_scheduled_time is None:
            seq.first_scheduled_time = time.monotonic()
        self.running.append(seq)
        self._add_to_batch(batch, seq, n)

    def _waiting_order(self) -> list[tuple[Sequence, list[int]]]:
        """Longest cached prefix first; plain FCFS for a long queue or when the head has waited long."""
        head = self.waiting[0]
        aged = time.monotonic() - head.arrival_time > MAX_WAIT_BEFORE_FCFS_S
        if aged or head.num_preemptions or len(self.waiting) > CACHE_AWARE_QUEUE_LIMIT:
            return [(seq, self.bm.lookup_prefix(seq)) for seq in list(self.waiting)]
        scored = [(seq, self.bm.lookup_prefix(seq)) for seq in self.waiting]
        return sorted(scored, key=lambda sc: -len(sc[1]))  # stable: FCFS among equals

    def _inflight_hashes(self) -> set[bytes]:
        """Names of prompt blocks that running sequences are still computing."""
        if not self.bm.enable_prefix_caching:
            return set()
        names: set[bytes] = set()
        for seq in self.running:
            if seq.num_computed_tokens < seq.num_prompt_tokens:
                self.bm.compute_hashes(seq, seq.num_prompt_tokens)
                names.update(seq.block_hashes[seq.num_computed_tokens // self.bm.block_size:])
        return names

    def _waits_for_inflight(self, seq: Sequence, cached: list[int], inflight: set[bytes]) -> bool:
        """Whether seq's next uncached full block is one a running request is computing now."""
        nxt = len(cached)
        if nxt >= len(seq.block_hashes) or (nxt + 1) * self.bm.block_size >= seq.num_tokens:
            return False
        return seq.block_hashes[nxt] in inflight

    @staticmethod
    def _add_to_batch(batch: ScheduledBatch, seq: Sequence, n: int) -> None:
        if n == 1:  # keep decodes at the head of the flattened batch
            batch.seqs.insert(batch.num_decodes, seq)
            batch.num_new_tokens.insert(batch.num_decodes, 1)
            batch.num_decodes += 1
        else:
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
