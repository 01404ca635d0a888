"""What the engine hands back: per-request stream items and the stats snapshot."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class RequestOutput:
    """One item of a request's stream: the new text and tokens since the previous item."""

    request_id: str
    text_delta: str
    token_ids: list[int]
    finished: bool
    # "stop" | "length" | "abort" | "timeout" (deadline) | "error" (this request failed) | None
    finish_reason: str | None
    usage: Usage
    # Time the request spent queued before its first scheduled step, filled on the first output.
    queue_time_s: float | None = None
    error: str | None = None  # why, when finish_reason is "error"
    # The engine's clock (time.monotonic()): when this item was made, and, on the first output, when
    # the request was first scheduled. A request's trace places its queue/prefill/decode stages by them.
    created_at: float = field(default_factory=time.monotonic)
    scheduled_at: float | None = None


@dataclass(slots=True)
class EngineStats:
    block_size: int
    num_blocks: int
    used_blocks: int      # referenced by live requests
    cached_blocks: int    # unreferenced but holding a reusable prefix
    free_blocks: int      # neither
    shared_blocks: int    # referenced by more than one live request
    pinned_blocks: int
    num_running: int
    num_waiting: int
    num_preemptions: int
    prompt_tokens_total: int
    generation_tokens_total: int
    prefix_query_tokens: int
    prefix_hit_tokens: int
    num_steps: int
    requests_finished: dict[str, int] = field(default_factory=dict)
    num_evictions: int = 0  # cached prefix blocks reclaimed for new contents
    chunk_hit_tokens: int = 0  # prompt tokens whose KV came from stored chunks (kv_reuse "chunks")
    chunk_recomputed_tokens: int = 0  # heads of reused chunks computed again in their new context
    chunk_blocks: int = 0  # blocks of the pool holding stored chunks
    chunk_query_tokens: int = 0  # chunk tokens of kv_reuse "chunks" prompts
    chunk_prefix_hit_tokens: int = 0  # of those, served by exact prefix hits

    @property
    def chunk_served_perc(self) -> float:
        """Share of kv_reuse "chunks" prompts' chunk tokens not computed: moved in or prefix hits."""
        if not self.chunk_query_tokens:
            return 0.0
        return (self.chunk_hit_tokens + self.chunk_prefix_hit_tokens) / self.chunk_query_tokens

    @property
    def usage_perc(self) -> float:
        return self.used_blocks / self.num_blocks if self.num_blocks else 0.0

    @property
    def hit_rate(self) -> float:
        return self.prefix_hit_tokens / self.prefix_query_tokens if self.prefix_query_tokens else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["usage_perc"] = self.usage_perc
        d["hit_rate"] = self.hit_rate
        return d
