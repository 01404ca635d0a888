"""`RagService`: the one facade the CLI and the HTTP server use for everything RAG.

It owns the data dir's RAG state (lock, catalog, embedded Qdrant shard or a Qdrant server
connection) and the models (embedder, BM25). All methods are safe to call from a thread pool:
writes (ingest, delete) to one collection are serialised by that collection's lock, writes to
different collections run concurrently, and reads take no service lock at all. After an ingest
the store is asked to build its vector index if enough is unindexed; the build runs in the
background and never blocks searches (see rag/store/edge_index.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from rag.catalog import Catalog
from rag.chunker import Chunker, ChunkerConfig, TokenSpans
from rag.collection_settings import CollectionSettings, CollectionSettingsTable
from rag.discovery import discover
from rag.embedder import Embedder
from rag.ids import make_doc_id, normalize_source
from rag.ingest import IngestPipeline, IngestProgress, NullProgress, SourceItem
from rag.lock import OwnerLock
from rag.retrieval import Retriever
from rag.scope_locks import ScopeLocks
from rag.settings import RagSettings
from rag.sparse import Bm25Encoder
from rag.store.base import VectorStore, hit_from_payload
from rag.types import CollectionInfo, DocInfo, DocResult, Hit, IngestSummary, Scope


class RagService:
    def __init__(
        self,
        data_dir: Path,
        qdrant_url: str | None = None,
        embed_model: str | None = None,
        device: str = "auto",
        settings: RagSettings | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        """`embedder` lets several services share one loaded model (tests, benchmarks)."""
        self.settings = settings or RagSettings()
        root = Path(data_dir) / "rag"
        self._owner = OwnerLock(root / "owner.lock")
        try:
            self._catalog = Catalog(root / "catalog.db")
            self._collection_settings = CollectionSettingsTable(root / "collection_settings.db")
            self.embedder = embedder or Embedder(embed_model, device=device)
            self._store = _open_store(root, qdrant_url, self.embedder.dimension, self.settings)
        except BaseException:
            self._owner.release()
            raise
        self._bm25 = Bm25Encoder(avg_len=self.settings.bm25_avg_len)
        max_tokens = min(self.settings.chunk_tokens, self.embedder.max_tokens - 2)
        config = ChunkerConfig(max_tokens=max_tokens, overlap_tokens=self.settings.overlap_tokens)
        self.chunker = Chunker(TokenSpans(self.embedder.tokenizer), config)
        self._pipeline = IngestPipeline(
            self.embedder, self._bm25, self.chunker, self._store, self._catalog, self.settings
        )
        self._retriever = Retriever(self.embedder, self._bm25, self._store, self.settings)
        self._locks = ScopeLocks()
        self._closed = False

    @property
    def store(self) -> VectorStore:
        return self._store

    def ingest_paths(
        self,
        paths: Iterable[str | Path],
        tenant: str,
        collection: str,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        progress: IngestProgress | None = None,
    ) -> IngestSummary:
        scope = Scope(tenant, collection)
        progress = progress or NullProgress()
        started = time.perf_counter()
        files, problems = discover(paths, include, exclude)
        progress.begin(len(files) + len(problems), sum(f.size for f in files))
        summary = IngestSummary()
        for problem in problems:
            doc_id = make_doc_id(tenant, collection, problem.source)
            summary.results.append(DocResult(problem.source, doc_id, "failed", error=problem.error))
            progress.file_done(summary.results[-1])
        items = [SourceItem(str(f.path), f.size, f.path.read_bytes) for f in files]
        with self._locks.of(scope):
            summary.results.extend(self._pipeline.run(scope, items, progress))
        if summary.num_added or summary.num_replaced:
            self._store.optimize()  # a bulk load ends with the index built (if the policy says so)
        summary.seconds = time.perf_counter() - started
        return summary

    def ingest_bytes(self, tenant: str, collection: str, source: str, data: bytes) -> DocResult:
        """One uploaded document. Returns once its chunks are stored and searchable; if it brings
        the unindexed part past the policy's threshold, the index build it starts runs on in the
        background (`wait_indexed` waits for it), so one upload never waits for a store-wide build."""
        scope = Scope(tenant, collection)
        item = SourceItem(normalize_source(source), len(data), lambda: data)
        with self._locks.of(scope):
            result = self._pipeline.run(scope, [item])[0]
        if result.status in ("added", "replaced"):
            self._store.request_index()
        return result

    def wait_indexed(self, timeout: float | None = None) -> bool:
        """Wait until no vector index build is running or due; False on timeout."""
        return self._store.wait_indexed(timeout)

    def retrieve(
        self, tenant: str, collection: str, query: str, top_k: int = 5, mode: str | None = None
    ) -> list[Hit]:
        return self._retriever.retrieve(Scope(tenant, collection), query, top_k, mode)

    def retrieve_many(
        self, tenant: str, collection: str, queries: list[str], top_k: int = 5, mode: str | None = None
    ) -> list[list[Hit]]:
        return self._retriever.retrieve_many(Scope(tenant, collection), queries, top_k, mode)

    def chunks(self, tenant: str, collection: str) -> list[Hit]:
        """Every stored chunk of the collection as a Hit (score 0), by source and position."""
        records = self.store.records(Scope(tenant, collection))
        hits = [hit_from_payload(point_id, 0.0, payload) for point_id, payload in records.items()]
        return sorted(hits, key=lambda h: (h.source, h.doc_id, h.chunk_index))

    def list_documents(self, tenant: str, collection: str) -> list[DocInfo]:
        return self._catalog.documents(Scope(tenant, collection))

    def list_collections(self, tenant: str) -> list[CollectionInfo]:
        Scope(tenant, "any")  # validates the tenant
        return self._catalog.collections(tenant)

    def collection_settings(self, tenant: str, collection: str) -> CollectionSettings:
        """The collection's own settings (fields left None inherit the server's defaults)."""
        return self._collection_settings.get(Scope(tenant, collection))

    def update_collection_settings(
        self, tenant: str, collection: str, changes: Mapping[str, str | None]
    ) -> CollectionSettings:
        return self._collection_settings.update(Scope(tenant, collection), changes)

    def delete_document(self, tenant: str, collection: str, doc_id: str) -> bool:
        scope = Scope(tenant, collection)
        with self._locks.of(scope):
            if self._catalog.find(scope, doc_id) is None:
                return False
            self._store.delete_document(scope, doc_id)
            return self._catalog.delete(doc_id)

    def delete_tenant(self, tenant: str) -> dict[str, int]:
        """Erase all of `tenant`'s RAG data: every collection's chunks, settings and documents' catalog rows.

        Holds the locks of all its collections, so an ingest in flight either lands before (and is
        erased) or waits and lands after; the caller stops new ones first (revokes the tenant's keys).
        The chunks are gone from every search at once; Qdrant reclaims their disk space when it next
        vacuums or rebuilds the segments."""
        Scope(tenant, "any")  # validates the tenant
        scopes = [Scope(tenant, c.name) for c in self._catalog.collections(tenant)]
        with self._locks.holding(scopes):
            chunks = self._store.delete_tenant(tenant)
            documents = self._catalog.delete_tenant(tenant)
            settings = self._collection_settings.delete_tenant(tenant)
        return {"collections": len(scopes), "documents": documents, "chunks": chunks,
                "collection_settings": settings}

    def close(self) -> None:
        with self._locks.holding(self._locks.known()):
            if self._closed:
                return
            self._closed = True
            self._store.close()
            self._catalog.close()
            self._collection_settings.close()
            self._owner.release()


def _open_store(root: Path, qdrant_url: str | None, dimension: int, settings: RagSettings) -> VectorStore:
    """Backends are imported on demand: each pulls in its own (heavy) Qdrant package."""
    if qdrant_url:
        from rag.store.server import QdrantServerStore, connect

        return QdrantServerStore(connect(qdrant_url), dimension)
    from rag.store.edge import EdgeStore
    from rag.store.edge_index import IndexPolicy

    policy = IndexPolicy(settings.index_min_chunks, settings.index_fraction)
    return EdgeStore(root / "edge", dimension, policy)
