"""The ingest pipeline: read → hash → (skip if unchanged) → load → chunk → embed → upsert → finalise.

Chunks from several files are embedded together in windows of `embed_window`, so a folder of small
files keeps the model as busy as one big file, and a huge file reports progress window by window.
A document is finalised (stale chunks of its previous version deleted, catalog marked ready) only
after all its chunks are in the store; a crash before that leaves the catalog saying `ingesting`,
and the next run redoes the document onto the same deterministic point ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from rag.catalog import Catalog
from rag.chunker import Chunker
from rag.embedder import Embedder
from rag.ids import make_doc_id, make_point_id, sha256_hex
from rag.loaders import LoadError, load_document
from rag.settings import RagSettings
from rag.sparse import Bm25Encoder
from rag.store.base import ChunkPoint, VectorStore
from rag.types import Chunk, DocResult, Scope


class IngestProgress(Protocol):
    """Receives progress as it happens (the CLI draws a rich progress bar from it)."""

    def begin(self, num_files: int, num_bytes: int) -> None: ...

    def advance(self, num_chunks: int, num_bytes: float) -> None: ...

    def file_done(self, result: DocResult) -> None: ...


class NullProgress:
    def begin(self, num_files: int, num_bytes: int) -> None:
        pass

    def advance(self, num_chunks: int, num_bytes: float) -> None:
        pass

    def file_done(self, result: DocResult) -> None:
        pass


@dataclass(slots=True, frozen=True)
class SourceItem:
    """One thing to ingest: its source name (the document's identity) and how to get its bytes."""

    source: str
    size: int
    read: Callable[[], bytes]


@dataclass(slots=True)
class _PendingDoc:
    index: int
    doc_id: str
    source: str
    sha256: str
    size: int
    status: str  # "added" or "replaced"
    chunks: list[Chunk]
    num_taken: int = 0


def embed_input(chunk: Chunk, with_heading: bool) -> str:
    """What the embedder and BM25 see: the chunk, prefixed by its heading path when enabled."""
    if with_heading and chunk.heading:
        return f"{chunk.heading}\n\n{chunk.text}"
    return chunk.text


class IngestPipeline:
    def __init__(
        self,
        embedder: Embedder,
        bm25: Bm25Encoder,
        chunker: Chunker,
        store: VectorStore,
        catalog: Catalog,
        settings: RagSettings,
    ) -> None:
        self._embedder, self._bm25, self._chunker = embedder, bm25, chunker
        self._store, self._catalog, self._settings = store, catalog, settings
        self.pipeline_id = settings.fingerprint(embedder.model_name)

    def run(
        self, scope: Scope, items: Iterable[SourceItem], progress: IngestProgress | None = None
    ) -> list[DocResult]:
        progress = progress or NullProgress()
        results: dict[int, DocResult] = {}
        window: list[_PendingDoc] = []
        for index, item in enumerate(items):
            prepared = self._prepare(scope, index, item)
            if isinstance(prepared, DocResult):
                self._record(results, index, prepared, progress, item.size)
                continue
            self._catalog.begin(scope, prepared.doc_id, prepared.source, prepared.sha256, self.pipeline_id)
            window.append(prepared)
            while _untaken(window) >= self._settings.embed_window:
                self._flush(scope, window, results, progress)
        while window:
            self._flush(scope, window, results, progress)
        return [results[i] for i in sorted(results)]

    def _prepare(self, scope: Scope, index: int, item: SourceItem) -> _PendingDoc | DocResult:
        doc_id = make_doc_id(scope.tenant, scope.collection, item.source)
        try:
            data = item.read()
        except OSError as exc:
            return DocResult(item.source, doc_id, "failed", error=(exc.strerror or str(exc)).lower())
        sha256 = sha256_hex(data)
        entry = self._catalog.get(doc_id)
        if entry is not None and entry.is_current(sha256, self.pipeline_id):
            return DocResult(item.source, doc_id, "skipped", chunks=entry.chunks)
        try:
            loaded = load_document(item.source, data)
        except LoadError as exc:
            return DocResult(item.source, doc_id, "failed", error=str(exc))
        chunks = self._chunker.chunk(loaded.text, doc_id, item.source, loaded.title)
        if not chunks:
            return DocResult(item.source, doc_id, "failed", error="no text content")
        status = "replaced" if entry is not None and entry.content_sha256 else "added"
        return _PendingDoc(index, doc_id, item.source, sha256, len(data), status, chunks)

    def _flush(
        self, scope: Scope, window: list[_PendingDoc], results: dict, progress: IngestProgress
    ) -> None:
        batch = _take(window, self._settings.embed_window)
        docs = list({id(doc): doc for doc, _ in batch}.values())
        try:
            self._store.upsert(scope, self._points(batch))
            progress.advance(len(batch), sum(doc.size / len(doc.chunks) for doc, _ in batch))
            for doc in [d for d in docs if d.num_taken == len(d.chunks)]:
                window.remove(doc)
                self._finalize(scope, doc, results, progress)
                docs.remove(doc)
        except Exception as exc:  # a store or model failure fails these files, not the whole batch
            for doc in docs:
                if doc in window:
                    window.remove(doc)
                self._catalog.fail(doc.doc_id, str(exc))
                failed = DocResult(doc.source, doc.doc_id, "failed", error=str(exc))
                self._record(results, doc.index, failed, progress)

    def _points(self, batch: list[tuple[_PendingDoc, Chunk]]) -> list[ChunkPoint]:
        texts = [embed_input(chunk, self._settings.embed_headings) for _, chunk in batch]
        dense = self._embedder.embed(texts)
        sparse = self._bm25.embed_documents(texts)
        return [
            ChunkPoint(
                make_point_id(doc.doc_id, chunk.chunk_index), dense[i], sparse[i], _payload(doc, chunk)
            )
            for i, (doc, chunk) in enumerate(batch)
        ]

    def _finalize(self, scope: Scope, doc: _PendingDoc, results: dict, progress: IngestProgress) -> None:
        self._store.delete_stale(scope, doc.doc_id, keep_sha256=doc.sha256)
        self._catalog.finish(doc.doc_id, doc.sha256, len(doc.chunks))
        result = DocResult(doc.source, doc.doc_id, doc.status, chunks=len(doc.chunks))  # type: ignore[arg-type]
        self._record(results, doc.index, result, progress)

    @staticmethod
    def _record(
        results: dict, index: int, result: DocResult, progress: IngestProgress, size: int = 0
    ) -> None:
        results[index] = result
        if size:
            progress.advance(0, size)
        progress.file_done(result)


def _untaken(window: list[_PendingDoc]) -> int:
    return sum(len(doc.chunks) - doc.num_taken for doc in window)


def _take(window: list[_PendingDoc], limit: int) -> list[tuple[_PendingDoc, Chunk]]:
    """The next `limit` chunks not yet embedded, in document order."""
    batch: list[tuple[_PendingDoc, Chunk]] = []
    for doc in window:
        take = min(limit - len(batch), len(doc.chunks) - doc.num_taken)
        batch.extend((doc, chunk) for chunk in doc.chunks[doc.num_taken : doc.num_taken + take])
        doc.num_taken += take
        if len(batch) == limit:
            break
    return batch


def _payload(doc: _PendingDoc, chunk: Chunk) -> dict:
    return {
        "doc_id": doc.doc_id,
        "source": doc.source,
        "chunk_index": chunk.chunk_index,
        "char_start": chunk.char_start,
        "char_end": chunk.char_end,
        "heading": chunk.heading,
        "text": chunk.text,
        "content_sha256": doc.sha256,
    }
