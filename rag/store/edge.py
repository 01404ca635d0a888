"""Embedded backend: a Qdrant Edge shard under the data dir (the real Qdrant engine in process,
with a WAL, HNSW and payload indexes). One process owns the shard; `rag.lock` enforces that.

Two locks in this process: `_lock` around each single shard call (searches and writes alike, each
short), and `_write_gate`, which orders writes against the two moments of an index build that must
not see a write (copying the shard, swapping in the built one). The build itself runs in a child
process and holds neither, so searches keep answering while it runs (`rag.store.edge_index`).
"""

from __future__ import annotations

import shutil
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
from rag.store.edge_dirs import ShardDirs
from rag.store.edge_index import BackgroundIndexer, IndexPolicy, optimize_in_child
from rag.types import Hit, Scope

_SCROLL_PAGE = 1000


class EdgeStore:
    def __init__(self, path: Path, dimension: int, policy: IndexPolicy | None = None) -> None:
        self._policy = policy or IndexPolicy()
        self._dirs = ShardDirs(Path(path))
        self._config = _config(dimension, self._policy)
        self._lock = threading.RLock()
        self._write_gate = threading.Lock()
        self._journal: list[qe.UpdateOperation] | None = None  # writes made while a build runs
        self._shard: qe.EdgeShard | None = _open_shard(self._dirs.live(), self._config)
        self._dirs.remove_stale()
        self._unindexed = _unindexed_estimate(self._shard.info())
        self._indexer = BackgroundIndexer(self._needs_build, self._build)

    def upsert(self, scope: Scope, points: list[ChunkPoint]) -> None:
        if not points:
            return
        edge_points = [qe.Point(p.id, _vectors(p), full_payload(scope, p.payload)) for p in points]
        self._write(qe.UpdateOperation.upsert_points(edge_points), new_points=len(edge_points))

    def delete_stale(self, scope: Scope, doc_id: str, keep_sha256: str) -> None:
        stale = qe.Filter(
            must=_conditions(scope, doc_id),
            must_not=[qe.FieldCondition("content_sha256", match=qe.MatchValue(keep_sha256))],
        )
        self._write(qe.UpdateOperation.delete_points_by_filter(stale))

    def delete_document(self, scope: Scope, doc_id: str) -> None:
        self._write(qe.UpdateOperation.delete_points_by_filter(_filter(scope, doc_id)))

    def delete_tenant(self, tenant: str) -> int:
        """Delete every point of `tenant` (all its collections); returns how many there were."""
        tenant_filter = qe.Filter(must=[qe.FieldCondition(TENANT_FIELD, match=qe.MatchValue(tenant))])
        with self._write_gate:
            with self._lock:
                count = self._shard.count(qe.CountRequest(filter=tenant_filter, exact=True))
            self._apply(qe.UpdateOperation.delete_points_by_filter(tenant_filter))
        return count

    def _write(self, operation: qe.UpdateOperation, new_points: int = 0) -> None:
        with self._write_gate:
            self._apply(operation, new_points)

    def _apply(self, operation: qe.UpdateOperation, new_points: int = 0) -> None:
        """Apply one write (the caller holds `_write_gate`), journaled while a build runs."""
        with self._lock:
            self._shard.update(operation)
        self._unindexed += new_points
        if self._journal is not None:
            self._journal.append(operation)

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

    def shard_info(self) -> qe.ShardInfo:
        """Qdrant's own numbers: segments, points, indexed vectors (dense and sparse both count)."""
        with self._lock:
            return self._shard.info()

    @property
    def building(self) -> bool:
        return self._indexer.building

    def request_index(self) -> None:
        """Start a background build if the policy asks for one; returns at once."""
        if self._needs_build():
            self._indexer.request()

    def wait_indexed(self, timeout: float | None = None) -> bool:
        """Wait for a running or requested build to end; False on timeout."""
        return self._indexer.wait(timeout)

    def optimize(self) -> None:
        """Build the index now if the policy asks for one, and wait; searches go on meanwhile."""
        self.request_index()
        self.wait_indexed()
        if self._indexer.last_error and self._needs_build():
            raise RuntimeError(f"vector index build failed: {self._indexer.last_error}")

    def _needs_build(self) -> bool:
        with self._lock:
            points = self._shard.info().points_count if self._shard is not None else 0
        return self._policy.needs_build(self._unindexed, points)

    def _build(self, stop: threading.Event) -> None:
        """Copy, build in a child, swap in (see `rag.store.edge_index`). Runs on the indexer thread."""
        build = self._dirs.build
        with self._write_gate:
            with self._lock:
                self._shard.flush()
            shutil.rmtree(build, ignore_errors=True)
            shutil.copytree(self._dirs.live(), build, symlinks=True)
            self._journal, snapshot_unindexed = [], self._unindexed
        try:
            if optimize_in_child(build, stop):
                built = self._dirs.next_generation()
                build.rename(built)
                self._swap_in(qe.EdgeShard.load(str(built), self._config), built, snapshot_unindexed)
                return
        except BaseException:
            with self._write_gate:
                self._journal = None
            self._dirs.remove_stale()
            raise
        with self._write_gate:  # nothing to build: the live shard is already what Qdrant wants
            self._journal = None
            self._unindexed -= snapshot_unindexed
        shutil.rmtree(build, ignore_errors=True)

    def _swap_in(self, shard: qe.EdgeShard, path: Path, snapshot_unindexed: int) -> None:
        with self._write_gate:
            try:
                for operation in self._journal or []:
                    shard.update(operation)
                shard.flush()
                self._dirs.point_to(path)
            except BaseException:
                shard.close()
                raise
            with self._lock:
                old, self._shard = self._shard, shard
            self._journal = None
            self._unindexed -= snapshot_unindexed
        old.close()
        self._dirs.remove_stale()

    def close(self) -> None:
        self._indexer.close()
        with self._write_gate, self._lock:
            if self._shard is not None:
                self._shard.flush()
                self._shard.close()
                self._shard = None


def _config(dimension: int, policy: IndexPolicy) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors={DENSE_VECTOR: qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)},
        sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=policy.indexing_threshold_kb(dimension)),
    )


def _unindexed_estimate(info: qe.ShardInfo) -> int:
    """Dense vectors not in an HNSW index at open time (sparse ones are always indexed).

    Qdrant counts both vectors of every point in `indexed_vectors_count`, including points
    superseded but not yet vacuumed, so this can undercount; it is only a starting value."""
    return max(0, 2 * info.points_count - info.indexed_vectors_count)


def _open_shard(path: Path, config: qe.EdgeConfig) -> qe.EdgeShard:
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
