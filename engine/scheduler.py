"""Continuous batching: every step fills a token budget from running decodes, then prefill chunks.

Order within a step: running sequences that decode (one token each), then prefill work: running
sequences part-way through a chunked prefill and waiting sequences to admit, interleaved across
groups (tenants) by weighted fair queuing over prompt tokens (see fairness.py and _prefill_order).
Within a group, running chunks come first, then waiting requests with the most reusable KV (cached
prefix plus stored chunks, for kv_reuse "chunks"), or in arrival order once the group's oldest
request has waited long. When blocks run out, the newest
running sequence is preempted: its blocks are freed and it is recomputed later from its tokens
(prompt plus what it had generated), so its output is unchanged. A sequence that cannot fit even
alone (pinned blocks took the room) is handed back as unschedulable instead of looping forever.

The scheduler owns each sequence's progress: it alone writes num_computed_tokens (on admission,
after each step in postprocess, and on preemption).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from engine.block_manager import BlockManager
from engine.chunk_kv import ChunkOps, KVMove, KVSave, ReuseRegion
from engine.config import EngineConfig
from engine.fairness import FairShare
from engine.sequence import Sequence, SequenceStatus

# Per group, at most this many waiting requests are scored by cache hits each step (the rest wait).
CACHE_AWARE_QUEUE_LIMIT = 64
# Once a group's oldest waiting request is older than this, the group is served in arrival order.
MAX_WAIT_BEFORE_FCFS_S = 2.0


@dataclass(slots=True)
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    num_decodes: int = 0  # the first num_decodes entries schedule exactly one token
    preempted: list[Sequence] = field(default_factory=list)
    unschedulable: list[Sequence] = field(default_factory=list)  # can never fit: the engine fails them
    chunk_ops: dict[str, ChunkOps] = field(default_factory=dict)  # by request id (chunk_kv.py)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def is_empty(self) -> bool:
        return not self.seqs

    def num_reused(self, seq: Sequence) -> int:
        """Tokens of seq's step whose KV is moved in from stored chunks (not computed)."""
        ops = self.chunk_ops.get(seq.request_id)
        return ops.num_reused if ops else 0

    def only(self, index: int) -> ScheduledBatch:
        """The batch of one of its sequences alone (with its chunk work)."""
        seq = self.seqs[index]
        ops = {seq.request_id: self.chunk_ops[seq.request_id]} if seq.request_id in self.chunk_ops else {}
        return ScheduledBatch([seq], [self.num_new_tokens[index]], int(index < self.num_decodes),
                              chunk_ops=ops)

    def without(self, dropped: list[Sequence]) -> ScheduledBatch:
        """The same batch less some sequences (their entries removed, decodes still first)."""
        pairs = enumerate(zip(self.seqs, self.num_new_tokens, strict=True))
        keep = [(s, n, i < self.num_decodes) for i, (s, n) in pairs if s not in dropped]
        ops = {s.request_id: self.chunk_ops[s.request_id]
               for s, _, _ in keep if s.request_id in self.chunk_ops}
        return ScheduledBatch([s for s, _, _ in keep], [n for _, n, _ in keep], sum(d for *_, d in keep),
                              self.preempted, self.unschedulable, ops)


@dataclass(slots=True)
class _Candidate:
    seq: Sequence
    hits: list[int]
    num_reusable: int  # prompt tokens it need not compute: prefix hits plus stored chunks


@dataclass(slots=True)
class _Prefill:
    """A piece of prefill work: a running sequence's next chunk (hits None) or a waiting request."""
    seq: Sequence
    hits: list[int] | None
    tag: float  # virtual finish tag (see Scheduler._prefill_order)


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager) -> None:
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.bm = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.fair = FairShare(arrival_lead=config.max_num_batched_tokens)
        self.num_preemptions = 0
        self.chunk_recompute_tokens = config.chunk_recompute_tokens

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
        self.fair.activate(seq.group)
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a finished or aborted sequence out and release its blocks at once."""
        if seq.status is SequenceStatus.FINISHED:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._release(seq)
        seq.status = SequenceStatus.FINISHED
        self.fair.deactivate(seq.group)

    def _release(self, seq: Sequence) -> None:
        for region in seq.reuse_regions:
            if region.start >= seq.num_computed_tokens:  # held, not moved in yet
                self.bm.release(region.entry.block_ids)
        for _, blocks in seq.saving:
            self.bm.release(blocks)
        seq.reuse_regions, seq.unsaved_spans, seq.saving = [], [], []
        self.bm.free(seq)
        seq.num_computed_tokens = 0

    # --- one step --------------------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch:
        """Decodes first; then prefill work (running chunks and admissions) in fair order."""
        batch = ScheduledBatch()
        decodes = [s for s in self.running if s.num_uncomputed_tokens == 1]
        budget = self._schedule_running(batch, decodes, self.max_num_batched_tokens)
        can_admit = not batch.preempted
        inflight = self._inflight_hashes() if self.waiting else set()
        for work in self._prefill_order():
            if budget == 0:
                break
            if work.hits is None:
                budget = self._schedule_running(batch, [work.seq], budget)
                can_admit = can_admit and not batch.preempted
            elif can_admit and len(self.running) < self.max_num_seqs:
                budget, can_admit = self._try_admit(work, batch, budget, inflight)
        assert batch.num_tokens <= self.max_num_batched_tokens
        return batch

    def _prefill_order(self) -> list[_Prefill]:
        """Running chunks and waiting requests by virtual finish tag (weighted fair queuing).

        A group's k-th piece of prefill work finishes, in virtual time, at the group's counter plus
        the prompt tokens of its first k pieces over its weight. Taking work in tag order interleaves
        the groups by what each has been served: a light group's request goes ahead of most of a
        flood's pending prefill, and its later chunks are not left behind the flood's chunks.
        """
        per_group: dict[str, list[tuple[Sequence, list[int] | None, int]]] = {}
        for seq in self.running:
            if seq.num_uncomputed_tokens > 1:
                per_group.setdefault(seq.group, []).append((seq, None, seq.num_uncomputed_tokens))
        for cand in self._candidates():
            cost = max(1, cand.seq.num_tokens - cand.num_reusable)
            per_group.setdefault(cand.seq.group, []).append((cand.seq, cand.hits, cost))
        order = []
        for group, items in per_group.items():
            tag = self.fair.counter(group)
            for seq, hits, cost in items:
                tag += cost / seq.weight
                order.append(_Prefill(seq, hits, tag))
        order.sort(key=lambda w: w.tag)
        return order

    def postprocess(self, batch: ScheduledBatch) -> int:
        """After the model ran: advance progress, name the blocks filled; returns prompt tokens computed."""
        num_prompt_tokens = 0
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            r = batch.num_reused(seq)
            if r:
                self._moved(seq, seq.num_computed_tokens, seq.num_computed_tokens + r + n)
            num_prompt_tokens += max(0, min(n, seq.num_prompt_tokens - seq.num_computed_tokens - r))
            seq.num_computed_tokens += r + n
            self.bm.commit_full_blocks(seq)
            self._saved(seq)
        return num_prompt_tokens

    def _moved(self, seq: Sequence, start: int, end: int) -> None:
        """Regions in [start, end) were moved in: drop their hold, count them."""
        for region in seq.reuse_regions:
            if start <= region.start < end:
                self.bm.release(region.entry.block_ids)
                self.bm.num_chunk_hit_tokens += region.end - region.start
                self.bm.num_chunk_recomputed_tokens += region.num_recomputed

    def _saved(self, seq: Sequence) -> None:
        """Chunks saved this step are named: later requests can reuse them."""
        salt = seq.chunk_salt
        for (start, end), blocks in seq.saving:
            self.bm.name_chunk(salt, seq.token_ids[start:end], blocks, start)
        seq.saving = []

    def _schedule_running(self, batch: ScheduledBatch, seqs: list[Sequence], budget: int) -> int:
        for seq in seqs:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            r, n = self._fit(seq, *self._step_span(seq, budget), budget, batch)
            if n == 0:
                continue
            self.bm.allocate_slots(seq, r + n)
            self._add_to_batch(batch, seq, n, r)
            budget -= n
        return budget

    def _reused_at(self, seq: Sequence, frontier: int) -> int:
        """Tokens from `frontier` on that planned reuse regions cover (back to back)."""
        end = frontier
        for region in seq.reuse_regions:
            if region.start == end:
                end = region.end
        return end - frontier

    def _step_span(self, seq: Sequence, budget: int, room: int | None = None) -> tuple[int, int]:
        """(tokens moved in, tokens computed) of seq's next step: from its frontier, the tokens
        between reuse regions computed and the regions moved in, in one step, until `budget`
        computed tokens or `room` tokens in all. A region goes in only whole and with budget left
        after it, so the step ends on computed tokens (a prompt's last token is in no chunk)."""
        pos = seq.num_computed_tokens
        limit = seq.num_tokens if room is None else min(seq.num_tokens, pos + room)
        moved = computed = 0
        for region in seq.reuse_regions:
            if region.start < pos:
                continue
            take = min(min(region.start, limit) - pos, budget - computed)
            computed, pos = computed + take, pos + take
            if pos < region.start or computed == budget or region.end > limit:
                return moved, computed
            moved, pos = moved + region.end - region.start, region.end
        return moved, computed + min(limit - pos, budget - computed)

    def _fit(self, seq: Sequence, r: int, n: int, budget: int, batch: ScheduledBatch) -> tuple[int, int]:
        """Shrink a step (r tokens moved in, n computed) to the free blocks, or preempt the newest
        until seq fits; (0, 0) when seq itself was preempted or given up."""
        while not self.bm.can_append(seq, r + n):
            room = self.bm.num_appendable_tokens(seq)
            if n > 1 and room >= 1:
                shrunk = self._step_span(seq, budget, room)
                if shrunk[1] >= 1:
                    return shrunk
            if self.running == [seq]:  # alone and still no room: it can never fit
                self._give_up(seq, batch)
                return 0, 0
            victim = self._pick_victim(seq, batch)
            self._preempt(victim)
            batch.preempted.append(victim)
            if victim is seq:
                return 0, 0
        return r, n

    def _give_up(self, seq: Sequence, batch: ScheduledBatch) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.status = SequenceStatus.WAITING  # the engine finishes it as unschedulable
        batch.unschedulable.append(seq)

    def _pick_victim(self, seq: Sequence, batch: ScheduledBatch) -> Sequence:
        """The newest running sequence not already given tokens this step (else seq itself)."""
        scheduled = set(map(id, batch.seqs))
        for victim in reversed(self.running):
            if victim is not seq and id(victim) not in scheduled:
                return victim if victim.arrival_time >= seq.arrival_time else seq
        return seq

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    # --- admissions ------------------------------------------------------------------------------
    def _try_admit(self, work: _Prefill, batch: ScheduledBatch, budget: int,
                   inflight: set[bytes]) -> tuple[int, bool]:
        """Admit one waiting request if it fits; returns the budget left and whether to admit more."""
        seq = work.seq
        hits = self.bm.revalidate(seq, work.hits)  # an admission this step may have evicted some
        if self._waits_for_inflight(seq, hits, inflight):
            return budget, True  # another request is computing this prefix right now: reuse it next step
        n = min(seq.num_tokens - len(hits) * self.bm.block_size, budget)
        if not self.bm.can_admit(seq, hits, n):
            if not self.running:  # nothing holds blocks but pins: it will never fit
                self.waiting.remove(seq)
                batch.unschedulable.append(seq)
                return budget, True
            return budget, False  # head-of-line: do not let smaller requests starve a large one
        n = self._admit(seq, hits, n, batch)
        inflight.update(seq.block_hashes[len(hits):])
        return budget - n, True

    def _admit(self, seq: Sequence, hits: list[int], n: int, batch: ScheduledBatch) -> int:
        """Make seq running with its prefix hits and up to n tokens to compute; returns those tokens."""
        self.waiting.remove(seq)
        seq.num_computed_tokens = self.bm.allocate_prefix(seq, hits)
        if seq.num_preemptions == 0:
            seq.num_cached_tokens = seq.num_computed_tokens
            self._count_chunk_tokens(seq)
        self._plan_chunks(seq, n)
        r, n = self._step_span(seq, n, self.bm.num_appendable_tokens(seq))
        self.bm.allocate_slots(seq, r + n)
        seq.status = SequenceStatus.RUNNING
        if seq.first_scheduled_time is None:
            seq.first_scheduled_time = time.monotonic()
        self.running.append(seq)
        self._add_to_batch(batch, seq, n, r)
        return n

    def _count_chunk_tokens(self, seq: Sequence) -> None:
        """A kv_reuse "chunks" prompt's chunk tokens, and how many of them a prefix hit covers."""
        if seq.reuse_chunks:
            hit = seq.num_computed_tokens
            self.bm.num_chunk_query_tokens += sum(end - start for start, end in seq.chunk_spans)
            self.bm.num_chunk_prefix_hit_tokens += sum(max(0, min(end, hit) - start)
                                                       for start, end in seq.chunk_spans)

    def _plan_chunks(self, seq: Sequence, n: int) -> None:
        """Hold the stored chunks seq's prompt can reuse and list the ones it will save. A chunk is
        reused only while the blocks its first step needs (n computed, plus the chunks at its
        frontier) stay available.

        A chunk is reused from its k-th token on whether or not a prefix hit covers some of its head,
        so which tokens are moved in depends on the prompt and the stored chunks, not on what other
        requests left in the prefix cache: a prompt gets the same answer alone or in a crowd."""
        if not seq.reuse_chunks:
            return 0
        k, salt, frontier = self.chunk_recompute_tokens, seq.chunk_salt, seq.num_computed_tokens
        for start, end in seq.chunk_spans:
            entry = self.bm.lookup_chunk(salt, seq.token_ids[start:end])
            first = max(start + k, frontier)  # the head before it is recomputed or was a prefix hit
            if entry is None:
                if not seq.reuse_regions:  # computed in an exact context: saved once computed
                    seq.unsaved_spans.append((start, end))
            elif first < end and self.bm.can_hold(entry):
                self.bm.hold(entry.block_ids)
                num_recomputed = first - max(start, frontier)
                seq.reuse_regions.append(ReuseRegion(first, end, entry, first - start, num_recomputed))
                if not self.bm.can_append(seq, self._reused_at(seq, frontier) + n):
                    self.bm.release(seq.reuse_regions.pop().entry.block_ids)

    def _candidates(self) -> list[_Candidate]:
        """Per group, its first waiting requests with their cache hits, in the group's order."""
        by_group: dict[str, list[Sequence]] = {}
        for seq in self.waiting:
            queue = by_group.setdefault(seq.group, [])
            if len(queue) < CACHE_AWARE_QUEUE_LIMIT:
                queue.append(seq)
        now = time.monotonic()
        out = []
        for queue in by_group.values():
            head = queue[0]
            fcfs = head.num_preemptions > 0 or now - head.arrival_time > MAX_WAIT_BEFORE_FCFS_S
            ranked = [self._candidate(seq) for seq in queue]
            if not fcfs:
                ranked.sort(key=lambda cand: -cand.num_reusable)  # stable: arrival order among equals
            out.extend(ranked)
        return out

    def _candidate(self, seq: Sequence) -> _Candidate:
        hits = self.bm.lookup_prefix(seq)
        num_hit = len(hits) * self.bm.block_size
        return _Candidate(seq, hits, num_hit + self.bm.num_stored_chunk_tokens(seq, num_hit))

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

    def _waits_for_inflight(self, seq: Sequence, hits: list[int], inflight: set[bytes]) -> bool:
        """Whether seq's next uncached full block is one a running request is computing now."""
        nxt = len(hits)
        if nxt >= len(seq.block_hashes) or (nxt + 1) * self.bm.block_size >= seq.num_tokens:
            return False
        return seq.block_hashes[nxt] in inflight

    def _add_to_batch(self, batch: ScheduledBatch, seq: Sequence, n: int, num_reused: int = 0) -> None:
        self.fair.charge(seq.group, n, seq.weight)
        ops = self._chunk_ops(seq, num_reused, n)
        if ops is not None:
            batch.chunk_ops[seq.request_id] = ops
        if n == 1:  # keep decodes at the head of the flattened batch
            batch.seqs.insert(batch.num_decodes, seq)
            batch.num_new_tokens.insert(batch.num_decodes, 1)
            batch.num_decodes += 1
        else:
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)

    def _chunk_ops(self, seq: Sequence, num_reused: int, n: int) -> ChunkOps | None:
        """The moves of the regions this step covers, and the saves of chunks this step completes."""
        start, end = seq.num_computed_tokens, seq.num_computed_tokens + num_reused + n
        moves = [KVMove(r.entry.block_ids, r.offset, r.start, r.end - r.start,
                        r.start - r.offset - r.entry.base_position)
                 for r in seq.reuse_regions if start <= r.start < end]
        saves = []
        for span in [s for s in seq.unsaved_spans if s[1] <= end]:
            seq.unsaved_spans.remove(span)
            blocks = self.bm.reserve_chunk_blocks(span[1] - span[0], spare=0)
            if blocks is not None:  # no room: the chunk is simply not stored
                seq.saving.append((span, blocks))
                saves.append(KVSave(tuple(blocks), span[0], span[1] - span[0]))
        return ChunkOps(num_reused, moves, saves) if moves or saves else None

    def check_invariants(self) -> None:
        """Block accounting holds and no block is shared except by name (tests call it every step)."""
        self.bm.check_invariants()
        self.bm.check_sharing(self.running)
        for seq in self.running:  # a chunk not moved in yet is held: never evicted under it
            for region in seq.reuse_regions:
                if region.start >= seq.num_computed_tokens:
                    assert all(self.bm.blocks[b].ref_count > 0 for b in region.entry.block_ids)
                    assert self.bm.chunks.get(self.bm.chunk_of_block.get(region.entry.block_ids[0], b"")) \
                        is region.entry
        assert all(s.status is SequenceStatus.WAITING and not s.block_table for s in self.waiting)
        assert sum(self.fair.num_live.values()) == len(self.waiting) + len(self.running)
