"""Tunable knobs of the retrieval pipeline, with the shipped defaults.

The defaults were chosen on the squad-rag evaluation set (`appliance eval retrieval`); the numbers
behind them are in docs/benchmarks.md. `fingerprint()` names everything that changes what gets
stored, so a file ingested under other settings is re-ingested instead of skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rag.store.base import HybridParams

SEARCH_MODES = ("hybrid", "dense", "sparse")


@dataclass(slots=True, frozen=True)
class RagSettings:
    chunk_tokens: int = 256
    overlap_tokens: int = 64
    # Prefix each chunk's embedding input with its title / heading path (the stored text is unchanged).
    # Measured no better on squad-rag, so off by default.
    embed_headings: bool = False
    bm25_avg_len: float = 256.0
    default_mode: str = "hybrid"
    hybrid: HybridParams = field(default_factory=lambda: HybridParams(rrf_k=10))
    # Chunks embedded per call: several files' chunks are batched together to keep the model busy.
    embed_window: int = 128
    # Embedded store: build the vector index in the background once the chunks written since the
    # last build reach max(index_min_chunks, index_fraction × all chunks); see rag/store/edge_index.py.
    index_min_chunks: int = 2000
    index_fraction: float = 0.1

    def fingerprint(self, model_name: str) -> str:
        return (
            f"{model_name}|chunk={self.chunk_tokens}/{self.overlap_tokens}"
            f"|headings={int(self.embed_headings)}|bm25_avg_len={self.bm25_avg_len:g}"
        )
