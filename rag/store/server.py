"""Scale-out backend: a Qdrant server or cluster through `qdrant-client`.

Same payloads and vectors as the embedded backend, in one Qdrant collection shared by all tenants
(Qdrant's recommended multitenancy layout): the `tenant` field is a keyword index with
`is_tenant=true`, so the server co-locates each tenant's points and every search is filtered on it.
qdrant-client's local mode (`QdrantClient(path=...)` or `":memory:"`) runs the same code in tests.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

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

DEFAULT_COLLECTION = "appliance_chunks"
_SCROLL_PAGE = 1000


def connect(qdrant_url: str) -> QdrantClient:
    """`http(s)://host:port` for a server; `:memory:` or `local:/dir` for qdrant-client's local mode."""
    if qdrant_url == ":memory:":
        return QdrantClient(location=":memory:")
    if qdrant_url.startswith("local:"):
        return QdrantClient(path=qdrant_url.removeprefix("local:"))
    return QdrantClient(url=qdrant_url, timeout=30)


class QdrantServerStore:
    def __init__(self, client: QdrantClient, dimension: int, collection: str = DEFAULT_COLLECTION) -> None:
        self._client = client
        self._name = collection
        # Local mode is not thread-safe; a server client is, but the lock costs nothing next to a request.
        self._lock = threading.RLock()
        self._ensure_collection(dimension)

    def _ensure_collection(self, dimension: int) -> None:
        if self._client.collection_exists(self._name):
            return
        self._client.create_collection(
            self._name,
            vectors_config={DENSE_VECTOR: qm.VectorParams(size=dimension, distance=qm.Distance.COSINE)},
            sparse_vectors_config={SPARSE_VECTOR: qm.SparseVectorParams(modifier=qm.Modifier.IDF)},
        )
        tenant_index = qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=True)
        with warnings.catch_warnings():  # local mode says indexes are no-ops there; a server builds them
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            self._client.create_payload_index(self._name, TENANT_FIELD, field_schema=tenant_index)
            for name in INDEXED_KEYWORD_FIELDS:
                self._client.create_payload_index(self._name, name, field_schema=qm.PayloadSchemaType.KEYWORD)

    def upsert(self, scope: Scope, points: list[ChunkPoint]) -> None:
        if not points:
            return
        structs = [
            qm.PointStruct(id=p.id, vector=_vectors(p), payload=full_payload(scope, p.payload))
            for p in points
        ]
        with self._lock:
            self._client.upsert(self._name, points=structs, wait=True)

    def delete_stale(self, scope: Scope, doc_id: str, keep_sha256: str) -> None:
        stale = qm.Filter(
            must=_conditions(scope, doc_id),
            must_not=[qm.FieldCondition(key="content_sha256", match=qm.MatchValue(value=keep_sha256))],
        )
        self._delete(stale)

    def delete_document(self, scope: Scope, doc_id: str) -> None:
        self._delete(_filter(scope, doc_id))

    def delete_tenant(self, tenant: str) -> int:
        """Same filtered delete as the embedded store; count and delete are two calls here, so a
        write racing them may be missed by the count (the service holds the collections' locks).
        Tested only through qdrant-client's local mode: there is no Qdrant server binary here."""
        condition = qm.FieldCondition(key=TENANT_FIELD, match=qm.MatchValue(value=tenant))
        tenant_filter = qm.Filter(must=[condition])
        with self._lock:
            count = self._client.count(self._name, count_filter=tenant_filter, exact=True).count
            self._delete(tenant_filter)
        return count

    def _delete(self, selector: qm.Filter) -> None:
        with self._lock:
            self._client.delete(self._name, points_selector=qm.FilterSelector(filter=selector), wait=True)

    def search(
        self,
        scope: Scope,
        dense: np.ndarray | None,
        sparse: SparseEmbedding | None,
        limit: int,
        hybrid: HybridParams,
    ) -> list[Hit]:
        scope_filter = _filter(scope)
        kwargs = _query_kwargs(scope_filter, dense, sparse, hybrid)
        with self._lock:
            response = self._client.query_points(
                self._name, limit=limit, query_filter=scope_filter, with_payload=True, **kwargs
            )
        return [hit_from_payload(p.id, p.score, p.payload or {}) for p in response.points]

    def count(self, scope: Scope, doc_id: str | None = None) -> int:
        with self._lock:
            return self._client.count(self._name, count_filter=_filter(scope, doc_id), exact=True).count

    def records(self, scope: Scope, doc_id: str | None = None) -> dict[str, dict]:
        found: dict[str, dict] = {}
        offset = None
        while True:
            with self._lock:
                records, offset = self._client.scroll(
                    self._name,
                    scroll_filter=_filter(scope, doc_id),
                    limit=_SCROLL_PAGE,
                    offset=offset,
                    with_payload=True,
                )
            found.update((str(r.id), dict(r.payload or {})) for r in records)
            if offset is None:
                return found

    def request_index(self) -> None:
        """The server runs its own optimizers in the background; nothing to do here."""

    def wait_indexed(self, timeout: float | None = None) -> bool:
        return True

    def optimize(self) -> None:
        """The server builds its indexes itself, in the background, while it keeps serving."""

    def close(self) -> None:
        with self._lock:
            self._client.close()


def _conditions(scope: Scope, doc_id: str | None = None) -> list[qm.FieldCondition]:
    conditions = [
        qm.FieldCondition(key=TENANT_FIELD, match=qm.MatchValue(value=scope.tenant)),
        qm.FieldCondition(key="collection", match=qm.MatchValue(value=scope.collection)),
    ]
    if doc_id is not None:
        conditions.append(qm.FieldCondition(key="doc_id", match=qm.MatchValue(value=doc_id)))
    return conditions


def _filter(scope: Scope, doc_id: str | None = None) -> qm.Filter:
    return qm.Filter(must=_conditions(scope, doc_id))


def _vectors(point: ChunkPoint) -> dict:
    sparse = qm.SparseVector(indices=point.sparse.indices, values=point.sparse.values)
    return {DENSE_VECTOR: np.asarray(point.dense, dtype=np.float32).tolist(), SPARSE_VECTOR: sparse}


def _query_kwargs(
    scope_filter: qm.Filter, dense: np.ndarray | None, sparse: SparseEmbedding | None, hybrid: HybridParams
) -> dict:
    dense_query = None if dense is None else np.asarray(dense, dtype=np.float32).tolist()
    sparse_query = None if sparse is None else qm.SparseVector(indices=sparse.indices, values=sparse.values)
    sparse_params = qm.SearchParams(idf=qm.IdfCorpusParams(corpus=scope_filter))
    if dense_query is None and sparse_query is None:
        raise ValueError("search needs a dense or a sparse query")
    if sparse_query is None:
        return {"query": dense_query, "using": DENSE_VECTOR}
    if dense_query is None:
        return {"query": sparse_query, "using": SPARSE_VECTOR, "search_params": sparse_params}
    prefetch = [
        qm.Prefetch(query=dense_query, using=DENSE_VECTOR, limit=hybrid.candidates, filter=scope_filter),
        qm.Prefetch(
            query=sparse_query,
            using=SPARSE_VECTOR,
            limit=hybrid.candidates,
            filter=scope_filter,
            params=sparse_params,
        ),
    ]
    rrf = qm.Rrf(k=hybrid.rrf_k, weights=[hybrid.dense_weight, hybrid.sparse_weight])
    return {"prefetch": prefetch, "query": qm.RrfQuery(rrf=rrf)}
