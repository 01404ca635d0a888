"""Embedded backend: a Qdrant Edge shard under the data dir (the real Qdrant engine in process,
with a WAL, HNSW and payload indexes). One process owns the shard; `rag.lock` enforces that, and
the lock below serialises this process's threads around it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import qdrant_edge as qe

from rag.sparse import SparseEmbedding
from rag.store.base import (
    DENSE_VECTOR,
    INDEXED_KEYWORD_FIELDS,
    SPARSE_VECTOR,
    TENANT_FIELD,
    ChunkPoint,
    HybridParams,
    full_payload,
    hit_from_payload,
)
from rag.types import Hit, Scope

_SCROLL_PAGE = 1000


class EdgeStore:
    def __init__(self, path: Path, dimension: int) -> None:
        self._lock = threading.RLock()
        self._shard = _open_shard(Path(path), dimension)

    def upsert(self, scope: Scope, points: list[ChunkPoint]) -> None:
        if not points:
            return
        edge_points = [qe.Point(p.id, _vectors(p), full_payload(scope, p.payload)) for p in points]
        with self._lock:
            self._shard.update(qe.UpdateOperation.upsert_points(edge_points))

    def delete_stale(self, scope: Scope, doc_id: str, keep_sha256: str) -> None:
        stale = qe.Filter(
            must=_conditions(scope, doc_id),
            must_not=[qe.FieldCondition("content_sha256", match=qe.MatchValue(keep_sha256))],
        )
        with self._lock:
            self._shard.update(qe.UpdateOperation.delete_points_by_filter(stale))

    def delete_document(self, scope: Scope, doc_id: str) -> None:
        with self._lock:
            self._shard.update(qe.UpdateOperation.delete_points_by_filter(_filter(scope, doc_id)))

    def search(
        self,
        scope: Scope,
        dense: np.ndarray | None,
        sparse: SparseEmbedding | None,
        limit: int,
        hybrid: HybridParams,
    ) -> list[Hit]:
        request = _query_request(_filter(scope), dense, sparse, limit, hybrid)
        with self._lock:
            points = self._shard.query(request)
        return [hit_from_payload(p.id, p.score, p.payload) for p in points]

    def count(self, scope: Scope, doc_id: str | None = None) -> int:
        with self._lock:
            return self._shard.count(qe.CountRequest(filter=_filter(scope, doc_id), exact=True))

    def records(self, scope: Scope, doc_id: str | None = None) -> dict[str, dict]:
        found: dict[str, dict] = {}
        offset = None
        while True:
            request = qe.ScrollRequest(
                offset=offset, limit=_SCROLL_PAGE, filter=_filter(scope, doc_id), with_payload=True
            )
            with self._lock:
                records, offset = self._shard.scroll(request)
            found.update((str(r.id), dict(r.payload or {})) for r in records)
            if offset is None:
                return found

    def optimize(self) -> None:
        """Build HNSW / merge segments once a bulk load is done (blocking; cheap when nothing to do)."""
        with self._lock:
            self._shard.optimize()

    def close(self) -> None:
        with self._lock:
            if self._shard is not None:
                self._shard.flush()
                self._shard.close()
                self._shard = None


def _open_shard(path: Path, dimension: int) -> qe.EdgeShard:
    config = qe.EdgeConfig(
        vectors={DENSE_VECTOR: qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)},
        sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
    )
    if (path / "edge_config.json").exists():
        try:
            return qe.EdgeShard.load(str(path), config)
        except Exception as exc:
            raise ValueError(f"vector store at {path} is incompatible ({exc}); use a new data dir") from None
    path.mkdir(parents=True, exist_ok=True)
    shard = qe.EdgeShard.create(str(path), config)
    shard.update(qe.UpdateOperation.create_field_index(TENANT_FIELD, qe.KeywordIndexParams(is_tenant=True)))
    for name in INDEXED_KEYWORD_FIELDS:
        shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword))
    return shard


def _conditions(scope: Scope, doc_id: str | None = None) -> list:
    conditions = [
        qe.FieldCondition(TENANT_FIELD, match=qe.MatchValue(scope.tenant)),
        qe.FieldCondition("collection", match=qe.MatchValue(scope.collection)),
    ]
    if doc_id is not None:
        conditions.append(qe.FieldCondition("doc_id", match=qe.MatchValue(doc_id)))
    return conditions


def _filter(scope: Scope, doc_id: str | None = None) -> qe.Filter:
    return qe.Filter(must=_conditions(scope, doc_id))


def _vectors(point: ChunkPoint) -> dict:
    sparse = qe.SparseVector(point.sparse.indices, point.sparse.values)
    return {DENSE_VECTOR: _floats(point.dense), SPARSE_VECTOR: sparse}


def _floats(vector: np.ndarray) -> list[float]:
    return np.asarray(vector, dtype=np.float32).tolist()


def _query_request(
    scope_filter: qe.Filter,
    dense: np.ndarray | None,
    sparse: SparseEmbedding | None,
    limit: int,
    hybrid: HybridParams,
) -> qe.QueryRequest:
    # BM25's IDF is computed over this tenant's collection only: other tenants' words never weigh in.
    sparse_params = qe.SearchParams(idf=qe.IdfParams(corpus=scope_filter))
    dense_query = None if dense is None else qe.Query.Nearest(_floats(dense), using=DENSE_VECTOR)
    sparse_query = (
        None
        if sparse is None
        else qe.Query.Nearest(qe.SparseVector(sparse.indices, sparse.values), using=SPARSE_VECTOR)
    )
    if dense_query is None or sparse_query is None:
        query = dense_query or sparse_query
        if query is None:
            raise ValueError("search needs a dense or a sparse query")
        params = sparse_params if dense_query is None else None
        return qe.QueryRequest(
            limit=limit, query=query, filter=scope_filter, params=params, with_payload=True
        )
    prefetches = [
        qe.Prefetch(limit=hybrid.candidates, query=dense_query, filter=scope_filter),
        qe.Prefetch(limit=hybrid.candidates, query=sparse_query, filter=scope_filter, params=sparse_params),
    ]
    fusion = qe.Fusion.Rrf(k=hybrid.rrf_k, weights=[hybrid.dense_weight, hybrid.sparse_weight])
    return qe.QueryRequest(
        limit=limit, prefetches=prefetches, query=fusion, filter=scope_filter, with_payload=True
    )
