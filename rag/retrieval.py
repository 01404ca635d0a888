"""Query side: embed the question, search the tenant's collection, return hits best first.

Modes: `hybrid` (dense + BM25, reciprocal-rank fused inside Qdrant), `dense`, `sparse` (BM25 only).
The two steps are OpenTelemetry spans (`embed`, `search`) through the API alone: they join the
caller's trace when it has one (the server's request traces) and cost next to nothing otherwise.
The search span names the prompt-injection markers found in the hits.
"""

from __future__ import annotations

from opentelemetry import trace

from rag.embedder import Embedder
from rag.injection import injection_markers
from rag.settings import SEARCH_MODES, RagSettings
from rag.sparse import Bm25Encoder
from rag.store.base import VectorStore
from rag.types import Hit, Scope

MAX_TOP_K = 100
_tracer = trace.get_tracer("rag")


class Retriever:
    def __init__(
        self, embedder: Embedder, bm25: Bm25Encoder, store: VectorStore, settings: RagSettings
    ) -> None:
        self._embedder, self._bm25, self._store, self._settings = embedder, bm25, store, settings

    def retrieve(self, scope: Scope, query: str, top_k: int = 5, mode: str | None = None) -> list[Hit]:
        return self.retrieve_many(scope, [query], top_k, mode)[0]

    def retrieve_many(
        self, scope: Scope, queries: list[str], top_k: int = 5, mode: str | None = None
    ) -> list[list[Hit]]:
        """Several queries at once: their embeddings are computed in one batch."""
        mode = _check(mode or self._settings.default_mode, top_k)
        texts = [_clean(query) for query in queries]
        with _tracer.start_as_current_span("embed", attributes={"rag.num_queries": len(texts)}):
            dense = [None] * len(texts) if mode == "sparse" else list(self._embedder.embed(texts))
            sparse = [None] * len(texts) if mode == "dense" else [self._bm25.embed_query(t) for t in texts]
        search_attributes = {"rag.mode": mode, "rag.top_k": top_k}
        with _tracer.start_as_current_span("search", attributes=search_attributes) as span:
            results = [
                self._store.search(scope, d, s, top_k, self._settings.hybrid)
                for d, s in zip(dense, sparse, strict=True)
            ]
            if span.is_recording():
                span.set_attribute("rag.injection_markers", _markers(results))
        return results


def _check(mode: str, top_k: int) -> str:
    if mode not in SEARCH_MODES:
        raise ValueError(f"mode must be one of {', '.join(SEARCH_MODES)}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"top_k must be an integer between 1 and {MAX_TOP_K}")
    return mode


def _markers(results: list[list[Hit]]) -> list[str]:
    """The prompt-injection markers found in any of the hits, each once."""
    return sorted({marker for hits in results for hit in hits for marker in injection_markers(hit.text)})


def _clean(query: str) -> str:
    text = " ".join(str(query).split())
    if not text:
        raise ValueError("query must be a non-empty string")
    return text
