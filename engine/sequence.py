"""A request inside the engine: its tokens, its KV block table and how far its KV is computed."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from engine.chunk_kv import ReuseRegion


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Sequence:
    request_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    salt: str = ""  # prefix-cache namespace (the tenant); "" is the public namespace
    public_prefix_len: int = 0  # leading tokens the caller marked shareable across salts
    group: str = ""  # fair-scheduling group (the tenant); see fairness.py
    weight: float = 1.0  # the group's share relative to other groups
    deadline: float | None = None  # time.monotonic() after which the request ends as "timeout"
    arrival_time: float = field(default_factory=time.monotonic)
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # of the leading full blocks
    num_computed_tokens: int = 0  # tokens whose KV is in the cache
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache (first admission)
    num_preemptions: int = 0
    first_scheduled_time: float | None = None
    finish_reason: str | None = None
    # Chunk KV reuse (chunk_kv.py): prompt spans [start, end) that are retrieved chunks, whether to
    # reuse their stored KV, and whether they are shared across salts (a public collection).
    chunk_spans: list[tuple[int, int]] = field(default_factory=list)
    reuse_chunks: bool = False
    public_chunks: bool = False
    chunk_namespace: str | None = None  # the chunks' salt when not `salt` (ChunkSpec.namespace)
    chunk_names: list[bytes] = field(default_factory=list)  # each span's chunk name, once computed
    reuse_regions: list[ReuseRegion] = field(default_factory=list)  # planned at admission, held
    unsaved_spans: list[tuple[int, int]] = field(default_factory=list)  # to save once computed exactly
    saving: list[tuple[tuple[int, int], list[int]]] = field(default_factory=list)  # span, blocks: this step

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def chunk_salt(self) -> str:
        if self.public_chunks:
            return ""
        return self.salt if self.chunk_namespace is None else self.chunk_namespace

    @property
    def num_exact_tokens(self) -> int:
        """Leading positions whose KV is exactly what computing the prompt gives: up to the first
        reused region (only those blocks may be named for the prefix cache)."""
        return self.reuse_regions[0].start if self.reuse_regions else len(self.token_ids)

    def salt_for_block(self, block_index: int, block_size: int) -> str:
        """Blocks wholly inside the public prefix use the shared namespace."""
        return "" if (block_index + 1) * block_size <= self.public_prefix_len else self.salt
