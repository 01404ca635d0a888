"""The KV block pool: allocation, reference counts and the prefix cache.

A full block is named by a hash chained from its parent's hash, its token ids and a salt, so equal
prefixes (same salt) map to the same physical block, shared by reference count. A block whose count
drops to zero keeps its contents and its name in an LRU list; a later hit revives it in O(1).
Allocation takes never-named free blocks first and evicts the least recently used cached block only
when none is left.

The hash only finds a candidate; a hit is served after checking what names it: the block's own token
ids, its salt, and its parent, the very physical block (at the same generation) that the hit just
before it resolved to. By induction a served prefix holds exactly the KV of the same tokens under the
same salt, so a collision of the hash can never serve wrong KV. A block is named only when its parent
is itself the named block, and eviction bumps a block's generation, which unlinks its cached children.
Hits taken earlier (the scheduler looks a queue up once per step) are re-checked the same way at the
moment they are attached, since an admission in between may have evicted them.

Counts: used = referenced; cached = unreferenced with a name; free = neither.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from dataclasses import dataclass

from engine.chunk_kv import ChunkEntry
from engine.sequence import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None
    token_ids: tuple[int, ...] = ()
    salt: str = ""
    parent_id: int | None = None  # the physical block before this one when it was named
    parent_generation: int = 0  # that parent's generation then
    generation: int = 0  # bumped whenever the block loses its name (evicted, flushed)
    pinned: bool = False


def hash_block(parent: bytes | None, token_ids: tuple[int, ...], salt: str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(parent or b"root")
    h.update(salt.encode())
    h.update(b"|")
    h.update(",".join(map(str, token_ids)).encode())
    return h.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        assert num_blocks > 0 and block_size > 0
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_ids: deque[int] = deque(range(num_blocks))  # never named, or evicted
        self.cached_lru: OrderedDict[int, None] = OrderedDict()  # ref 0, named; oldest first
        self.hash_to_block: dict[bytes, int] = {}
        self.pinned_ids: set[int] = set()  # pinned blocks hold one reference of their own
        self.num_used_blocks = 0  # referenced at all (by requests or by a pin)
        self.num_shared = 0  # referenced by more than one live request (pins not counted)
        self.num_query_tokens = 0
        self.num_hit_tokens = 0
        self.num_evictions = 0  # cached blocks reused for other contents
        self.chunks: dict[bytes, ChunkEntry] = {}  # stored chunk KV by chunk_name (chunk_kv.py)
        self.chunk_of_block: dict[int, bytes] = {}  # block id -> the stored chunk it is part of
        self.num_chunk_hit_tokens = 0  # prompt tokens served from stored chunks
        self.num_chunk_recomputed_tokens = 0  # heads of reused chunks computed again
        self.num_chunk_query_tokens = 0  # chunk tokens of kv_reuse "chunks" prompts (first admission)
        self.num_chunk_prefix_hit_tokens = 0  # of those, covered by a prefix hit at admission

    # --- counts -------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_ids)

    @property
    def num_cached_blocks(self) -> int:
        return len(self.cached_lru)

    @property
    def num_available_blocks(self) -> int:
        """Blocks an allocation may take: free ones and evictable cached ones."""
        return len(self.free_ids) + len(self.cached_lru)

    def num_shared_blocks(self) -> int:
        """Blocks referenced by more than one live request."""
        return self.num_shared

    def num_pinned_blocks(self) -> int:
        return len(self.pinned_ids)

    def num_idle_pinned_blocks(self) -> int:
        return sum(1 for b in self.pinned_ids if self.blocks[b].ref_count == 1)

    @property
    def num_live_blocks(self) -> int:
        """Blocks referenced by live requests (what the stats call used)."""
        return self.num_used_blocks - self.num_idle_pinned_blocks()

    @property
    def num_reusable_blocks(self) -> int:
        """Blocks holding a prefix that no live request references (what the stats call cached)."""
        return len(self.cached_lru) + self.num_idle_pinned_blocks()

    @property
    def num_unpinned_tokens(self) -> int:
        """Tokens the pool can hold outside pinned blocks."""
        return (self.num_blocks - len(self.pinned_ids)) * self.block_size

    @property
    def num_chunk_blocks(self) -> int:
        return len(self.chunk_of_block)

    def num_unfilled_slots(self, seqs: list[Sequence]) -> int:
        """Token slots of seqs' blocks that hold no KV yet: allocated but unfilled. Between steps a
        block table covers exactly its computed tokens rounded up to a block, so this is at most the
        tail of each sequence's last block (shared blocks are full, so counting per sequence is exact)."""
        return sum(len(seq.block_table) * self.block_size - seq.num_computed_tokens
                   for seq in seqs if seq.block_table)

    def blocks_needed(self, num_tokens: int) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    # --- prefix cache -------------------------------------------------------------------------
    def compute_hashes(self, seq: Sequence, upto_tokens: int) -> None:
        """Extend seq.block_hashes over the full blocks within its first `upto_tokens` tokens."""
        bs = self.block_size
        while (len(seq.block_hashes) + 1) * bs <= upto_tokens:
            i = len(seq.block_hashes)
            parent = seq.block_hashes[-1] if i else None
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            seq.block_hashes.append(hash_block(parent, tokens, seq.salt_for_block(i, bs)))

    def lookup_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the longest cached prefix of seq, leaving at least one token to compute."""
        if not self.enable_prefix_caching:
            return []
        self.compute_hashes(seq, seq.num_tokens - 1)
        hits: list[int] = []
        for i in range(self._num_hashable_blocks(seq)):
            block_id = self.hash_to_block.get(seq.block_hashes[i])
            if block_id is None or not self._is_hit(block_id, seq, i, hits[-1] if hits else None):
                break
            hits.append(block_id)
        return hits

    def revalidate(self, seq: Sequence, hits: list[int]) -> list[int]:
        """The leading part of an earlier lookup that still holds: an admission since may have evicted."""
        for i, block_id in enumerate(hits):
            if not self._is_hit(block_id, seq, i, hits[i - 1] if i else None):
                return hits[:i]
        return hits

    def _num_hashable_blocks(self, seq: Sequence) -> int:
        return min(len(seq.block_hashes), (seq.num_tokens - 1) // self.block_size)

    def _is_hit(self, block_id: int, seq: Sequence, index: int, parent_id: int | None) -> bool:
        """Whether block_id holds the KV of seq's block `index`, given its parent resolved to parent_id."""
        block, bs = self.blocks[block_id], self.block_size
        if block.block_hash != seq.block_hashes[index] or block.parent_id != parent_id:
            return False
        if parent_id is not None and self.blocks[parent_id].generation != block.parent_generation:
            return False
        return (block.salt == seq.salt_for_block(index, bs)
                and block.token_ids == tuple(seq.token_ids[index * bs:(index + 1) * bs]))

    def num_cached_prefix_tokens(self, seq: Sequence) -> int:
        return len(self.lookup_prefix(seq)) * self.block_size

    def can_ever_hold(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether num_tokens of seq would fit with nothing else live: pinned blocks never move, but
        seq may share the pinned ones its prefix hits."""
        pinned_hits = sum(1 for b in self.lookup_prefix(seq) if self.blocks[b].pinned)
        return self.blocks_needed(num_tokens) <= self.num_blocks - len(self.pinned_ids) + pinned_hits

    # --- allocation ---------------------------------------------------------------------------
    def can_admit(self, seq: Sequence, cached: list[int], num_new_tokens: int) -> bool:
        """Whether a blockless sequence can take its prefix hits plus blocks for num_new_tokens."""
        revive = sum(1 for b in cached if self.blocks[b].ref_count == 0)
        need = self.blocks_needed(len(cached) * self.block_size + num_new_tokens) - len(cached)
        return revive + need <= self.num_available_blocks

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Whether a running sequence can grow by num_new_tokens tokens."""
        need = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        return need <= self.num_available_blocks

    def num_appendable_tokens(self, seq: Sequence) -> int:
        """The most tokens a running sequence can grow by now (can_append holds up to this)."""
        return (len(seq.block_table) + self.num_available_blocks) * self.block_size - seq.num_computed_tokens

    def allocate_prefix(self, seq: Sequence, cached: list[int]) -> int:
        """Attach still-valid prefix hits to a blockless sequence; returns the tokens they cover."""
        assert not seq.block_table and seq.num_computed_tokens == 0
        assert self.revalidate(seq, cached) == cached, "attach only hits re-checked this moment"
        for block_id in cached:
            self._ref(block_id)
            seq.block_table.append(block_id)
        num_tokens = len(cached) * self.block_size
        if self.enable_prefix_caching:
            self.num_query_tokens += seq.num_tokens
            self.num_hit_tokens += num_tokens
        return num_tokens

    def allocate_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        """Grow seq's block table to hold num_computed_tokens + num_new_tokens tokens."""
        need = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        assert need <= self.num_available_blocks, "caller must check can_allocate first"
        for _ in range(need):
            seq.block_table.append(self._take_block())

    def commit_full_blocks(self, seq: Sequence) -> None:
        """Name the blocks that the last step filled, so later requests can share them."""
        if not self.enable_prefix_caching:
            return
        num_full = min(seq.num_computed_tokens, seq.num_exact_tokens) // self.block_size
        self.compute_hashes(seq, num_full * self.block_size)
        for i in range(num_full):
            block = self.blocks[seq.block_table[i]]
            if block.block_hash is not None:
                continue
            parent_id = seq.block_table[i - 1] if i else None
            if parent_id is not None and self.blocks[parent_id].block_hash != seq.block_hashes[i - 1]:
                return  # the parent stayed private: children of a private block stay private too
            if not self._claim_name(seq.block_hashes[i], seq, i, parent_id):
                return  # computed twice concurrently: the first keeps the name, this stays private
            self._name(block, seq, i, parent_id)

    def _claim_name(self, h: bytes, seq: Sequence, index: int, parent_id: int | None) -> bool:
        """Whether h is free for this block: unused, or held by a stale block (its parent evicted)."""
        holder = self.hash_to_block.get(h)
        if holder is None:
            return True
        if self._is_hit(holder, seq, index, parent_id) or self.blocks[holder].ref_count > 0:
            return False
        del self.cached_lru[holder]  # unreachable for good: its parent's name is gone
        self._forget(self.blocks[holder])
        self.free_ids.append(holder)
        return True

    def _name(self, block: Block, seq: Sequence, index: int, parent_id: int | None) -> None:
        bs = self.block_size
        block.block_hash = seq.block_hashes[index]
        block.token_ids = tuple(seq.token_ids[index * bs:(index + 1) * bs])
        block.salt = seq.salt_for_block(index, bs)
        block.parent_id = parent_id
        block.parent_generation = self.blocks[parent_id].generation if parent_id is not None else 0
        self.hash_to_block[block.block_hash] = block.block_id

    def free(self, seq: Sequence) -> None:
        """Drop seq's references (last block first, so a prefix's tail is evicted before its head)."""
        for block_id in reversed(seq.block_table):
            self._unref(block_id)
        seq.block_table.clear()

    # --- chunk KV (chunk_kv.py) ---------------------------------------------------------------
    @staticmethod
    def chunk_name(salt: str, token_ids: list[int]) -> bytes:
        return hash_block(b"chunk", tuple(token_ids), salt)

    def lookup_chunk(self, salt: str, token_ids: list[int]) -> ChunkEntry | None:
        """The stored chunk of exactly these tokens under this salt (its blocks still hold it)."""
        entry = self.chunks.get(self.chunk_name(salt, token_ids))
        bs = self.block_size
        if entry is None or entry.num_tokens != len(token_ids) or any(
                self.blocks[b].salt != salt
                or self.blocks[b].token_ids != tuple(token_ids[i * bs:(i + 1) * bs])
                for i, b in enumerate(entry.block_ids)):
            return None  # not stored, or a collision of the name: never serve other tokens' KV
        assert self._holds(entry)
        return entry

    def num_stored_chunk_tokens(self, seq: Sequence, start_at: int = 0) -> int:
        """Tokens from `start_at` on of seq's chunks that are stored now, by name only (an estimate
        that orders waiting requests; lookup_chunk checks the tokens before anything is reused)."""
        if not seq.reuse_chunks:
            return 0
        if len(seq.chunk_names) != len(seq.chunk_spans):
            salt = seq.chunk_salt
            seq.chunk_names = [self.chunk_name(salt, seq.token_ids[s:e]) for s, e in seq.chunk_spans]
        spans = zip(seq.chunk_spans, seq.chunk_names, strict=True)
        return sum(max(0, end - max(start, start_at)) for (start, end), name in spans if name in self.chunks)

    def _holds(self, entry: ChunkEntry) -> bool:
        """Whether every block of the entry still is the one named for it (eviction bumps generations)."""
        pairs = zip(entry.block_ids, entry.generations, strict=True)
        return all(self.blocks[b].generation == g for b, g in pairs)

    def can_hold(self, entry: ChunkEntry) -> bool:
        """Whether the entry's blocks can be held (its cached ones revived) within the available blocks."""
        return sum(1 for b in entry.block_ids if self.blocks[b].ref_count == 0) <= self.num_available_blocks

    def hold(self, block_ids: tuple[int, ...] | list[int]) -> None:
        """One more reference on each block (a chunk held until its KV is moved)."""
        for block_id in block_ids:
            self._ref(block_id)

    def release(self, block_ids: tuple[int, ...] | list[int]) -> None:
        for block_id in block_ids:
            self._unref(block_id)

    def reserve_chunk_blocks(self, num_tokens: int, spare: int) -> list[int] | None:
        """Unnamed blocks for a chunk about to be saved, if `spare` blocks stay available after."""
        need = self.blocks_needed(num_tokens)
        if need + spare > self.num_available_blocks:
            return None
        return [self._take_block() for _ in range(need)]

    def name_chunk(self, salt: str, token_ids: list[int], block_ids: list[int], base_position: int) -> None:
        """Name reserved blocks holding a chunk's KV (now written) and drop the reservation: they join
        the cached LRU like prefix blocks. A chunk stored meanwhile by another sequence wins."""
        name = self.chunk_name(salt, token_ids)
        if self.lookup_chunk(salt, token_ids) is not None:
            self.release(block_ids)
            return
        bs = self.block_size
        for i, block_id in enumerate(block_ids):
            block = self.blocks[block_id]
            block.block_hash = self._chunk_block_name(name, i)
            block.token_ids = tuple(token_ids[i * bs:(i + 1) * bs])
            block.salt = salt
            self.hash_to_block[block.block_hash] = block_id
            self.chunk_of_block[block_id] = name
        generations = tuple(self.blocks[b].generation for b in block_ids)
        self.chunks[name] = ChunkEntry(tuple(block_ids), generations, base_position, len(token_ids))
        self.release(block_ids)

    @staticmethod
    def _chunk_block_name(name: bytes, index: int) -> bytes:
        return hash_block(name, (index,), "chunk-block")

    # --- operator actions ---------------------------------------------------------------------
    def flush(self, salt: str | None = None) -> int:
        """Forget unreferenced cached prefixes (only those under `salt` when given); returns blocks freed."""
        num = 0
        for block_id in list(self.cached_lru):
            if salt is not None and self.blocks[block_id].salt != salt:
                continue
            del self.cached_lru[block_id]
            self._forget(self.blocks[block_id])
            self.free_ids.append(block_id)
            num += 1
        return num

    def pin(self, seq: Sequence) -> int:
        """Keep seq's full blocks cached for good (e.g. a system prompt); returns blocks pinned."""
        blocks = seq.block_table[: seq.num_computed_tokens // self.block_size]
        return sum(self._pin_block(b) for b in blocks if self.blocks[b].block_hash is not None)

    def pin_chunk(self, salt: str, token_ids: list[int]) -> int:
        """Keep a stored chunk's blocks for good (until unpin_all); returns blocks newly pinned, 0
        when no such chunk is stored."""
        entry = self.lookup_chunk(salt, token_ids)
        return 0 if entry is None else sum(self._pin_block(b) for b in entry.block_ids)

    def _pin_block(self, block_id: int) -> bool:
        block = self.blocks[block_id]
        if block.pinned:
            return False
        self._ref(block_id, pin=True)
        block.pinned = True
        self.pinned_ids.add(block_id)
        return True

    def unpin_all(self, salt: str | None = None) -> int:
        """Release pins (only blocks under `salt` when given); returns how many were unpinned."""
        ids = [b for b in self.pinned_ids if salt is None or self.blocks[b].salt == salt]
        for block_id in ids:
            self._unref(block_id, pin=True)
            self.blocks[block_id].pinned = False
            self.pinned_ids.discard(block_id)
        return len(ids)

    # --- internals ----------------------------------------------------------------------------
    def _take_block(self) -> int:
        if self.free_ids:
            block_id = self.free_ids.popleft()
        else:
            block_id, _ = self.cached_lru.popitem(last=False)  # evict the least recently used
            self._forget(self.blocks[block_id])
            self.num_evictions += 1
        self._ref(block_id)
        return block_id

    def _ref(self, block_id: int, pin: bool = False) -> None:
        """Add one reference; `pin` marks the pin's own reference (not a live request's)."""
        block = self.blocks[block_id]
        if block.ref_count == 0:
            self.cached_lru.pop(block_id, None)
            self.num_used_blocks += 1
        if not pin and block.ref_count - block.pinned == 1:
            self.num_shared += 1
        block.ref_count += 1

    def _unref(self, block_id: int, pin: bool = False) -> None:
        """Drop one reference; `pin` marks the pin's own reference (not a live request's)."""
        block = self.blocks[block_id]
        assert block.ref_count > 0, f"block {block_id} freed twice"
        if not pin and block.ref_count - block.pinned == 2:
            self.num_shared -= 1
        block.ref_count -= 1
        if block.ref_count == 0:
            self.num_used_blocks -= 1
            if block.block_hash is not None:
                self.cached_lru[block_id] = None
            else:
                self.free_ids.append(block_id)

    def _forget(self, block: Block) -> None:
        if block.block_hash is not None and self.hash_to_block.get(block.block_hash) == block.block_id:
            del self.hash_to_block[block.block_hash]
        name = self.chunk_of_block.pop(block.block_id, None)
        if name is not None:  # one block of a chunk lost: the chunk is gone
            self.chunks.pop(name, None)
        block.block_hash, block.token_ids, block.salt, block.parent_id = None, (), "", None
        block.generation += 1

    def check_invariants(self) -> None:
        """Every block is exactly one of used / cached / free; counts agree (used by tests)."""
        used = sum(1 for b in self.blocks if b.ref_count > 0)
        assert used == self.num_used_blocks
        assert self.num_shared == sum(1 for b in self.blocks if b.ref_count - b.pinned > 1)
        assert used + len(self.cached_lru) + len(self.free_ids) == self.num_blocks
        assert all(self.blocks[b].ref_count == 0 and self.blocks[b].block_hash for b in self.cached_lru)
        assert all(self.blocks[b].ref_count == 0 and not self.blocks[b].block_hash for b in self.free_ids)
        assert len(set(self.free_ids)) == len(self.free_ids)
        for h, b in self.hash_to_block.items():
            assert self.blocks[b].block_hash == h
        for name, entry in self.chunks.items():
            assert all(self.chunk_of_block.get(b) == name for b in entry.block_ids)
            assert self._holds(entry)

    def check_sharing(self, seqs: list[Sequence]) -> None:
        """No physical block is held by two sequences unless both reached it through its name."""
        holders: dict[int, list[tuple[Sequence, int]]] = {}
        for seq in seqs:
            for i, block_id in enumerate(seq.block_table):
                holders.setdefault(block_id, []).append((seq, i))
        for block_id, held in holders.items():
            if len(held) == 1:
                continue
            name = self.blocks[block_id].block_hash
            for seq, i in held:
                assert name is not None and i < len(seq.block_hashes) and seq.block_hashes[i] == name, (
                    f"block {block_id} is shared by {[s.request_id for s, _ in held]} but "
                    f"{seq.request_id} did not reach it by its name")
            assert self.blocks[block_id].ref_count >= len(held)
