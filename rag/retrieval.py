"""Query side: embed the question, search the tenant's collection, return hits best first.

Modes: `hybrid` (dense + BM25, reciprocal-rank fused inside Qdrant), `dense`, `sparse` (BM25 only).
"""

from __future__ import annotations

from rag.embedder import Embedder
from rag.settings import SEARCH_MODES, RagSettings
from rag.sparse import Bm25Encoder
from rag.store.base import VectorStore
from rag.types import Hit, Scope

MAX_TOP_K = 100


class Retriever:
    def __init__(
        self, embedder: Embedder, bm25: Bm25Encoder, store: VectorStore, settings: RagSettings
    ) -> None:
        self._embedder, self._bm25, self._store, self._settings = embedder, bm25, store, settings

    def retrieve(self, scope: Scope, query: str, top_k: int = 5, mode: str | None = None) -> list[Hit]:
        mode = mode or self._settings.default_mode
        if mode not in SEARCH_MODES:
            raise ValueError(f"mode must be one of {', '.join(SEARCH_MODES)}")
        if not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be an integer between 1 and {MAX_TOP_K}")
        query = " ".join(str(query).split())
        if not query:
            raise ValueError("query must be a non-empty string")
        dense = None if mode == "sparse" else self._embedder.embed_query(query)
        sparse = None if mode == "dense" else self._bm25.embed_query(query)
        return self._store.search(scope, dense, sparse, top_k, self._settings.hybrid)
