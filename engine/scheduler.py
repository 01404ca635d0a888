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
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq, cached = self._pick_waiting()
            n = min(seq.num_tokens - len(cached) * self.bm.block_size, budget)
            if not self.bm.can_admit(seq, cached, n):
                break
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
            budget -= n

    def _pick_waiting(self) -> tuple[Sequence, list[int]]:
        """Longest cached prefix first; FCFS for a long queue or an old request."""
        head = self.waiting[0]
        aged = time.monotonic() - head.arrival_time > MAX_WAIT_BEFORE_FCFS_S
        if aged or head.num_preemptions or len(self.waiting) > CACHE_AWARE_QUEUE_LIMIT:
            return head, self.bm.lookup_prefix(head)
        best, best_hits = head, self.bm.lookup_prefix(head)
        for seq in list(self.waiting)[1:]:
            hits = self.bm.lookup_prefix(seq)
            if len(hits) > len(best_hits):
                best, best_hits = seq, hits
        return best, best_hits

    @staticmethod
    def _add_to_batch(batch: ScheduledBatch, seq: Sequence, n: int) -> None:
        if n == 1:  # keep decodes at the head of the flattened batch
            batch.seqs.insert(batch.num_decodes, seq)
            batch.num_new_tokens.insert(batch.num_decodes, 1)
            batch.num_decodes += 1
        else:
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
