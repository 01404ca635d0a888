"""The one small interface both vector-store backends implement.

Every method takes a `Scope` (tenant + collection) and the backends build their payload filter from
it, so there is no way to search, count or delete without the tenant condition. Writes stamp the
scope into the payload the same way, so a point can never land outside its tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from rag.sparse import SparseEmbedding
from rag.types import Hit, Scope

DENSE_VECTOR = "dense"
SPARSE_VECTOR = "bm25"
# Payload fields with an index; `tenant` is the tenant (partitioning) index.
TENANT_FIELD = "tenant"
INDEXED_KEYWORD_FIELDS = ("collection", "doc_id", "content_sha256")


@dataclass(slots=True)
class ChunkPoint:
    """A chunk ready to store: deterministic id, both vectors, payload without tenant/collection."""

    id: str
    dense: np.ndarray
    sparse: SparseEmbedding
    payload: dict


@dataclass(slots=True, frozen=True)
class HybridParams:
    """Reciprocal-rank fusion of the dense and BM25 candidate lists."""

    candidates: int = 40
    rrf_k: int = 60
    dense_weight: float = 1.0
    sparse_weight: float = 1.0


class VectorStore(Protocol):
    def upsert(self, scope: Scope, points: list[ChunkPoint]) -> None: ...

    def delete_stale(self, scope: Scope, doc_id: str, keep_sha256: str) -> None:
        """Remove the document's points that belong to any other content version."""

    def delete_document(self, scope: Scope, doc_id: str) -> None: ...

    def delete_tenant(self, tenant: str) -> int:
        """Delete every point of the tenant, in all its collections; returns how many there were."""

    def search(
        self,
        scope: Scope,
        dense: np.ndarray | None,
        sparse: SparseEmbedding | None,
        limit: int,
        hybrid: HybridParams,
    ) -> list[Hit]:
        """Dense-only when `sparse` is None, BM25-only when `dense` is None, else fused."""

    def count(self, scope: Scope, doc_id: str | None = None) -> int: ...

    def records(self, scope: Scope, doc_id: str | None = None) -> dict[str, dict]:
        """Every stored point of the scope (or of one document): id -> payload, vectors left out."""

    def request_index(self) -> None:
        """Start building the vector index in the background if enough is unindexed."""

    def wait_indexed(self, timeout: float | None = None) -> bool:
        """Wait until no index build runs or is due; False on timeout."""

    def optimize(self) -> None:
        """Build the index now if due and wait for it (searches keep answering meanwhile)."""

    def close(self) -> None: ...


def full_payload(scope: Scope, payload: dict) -> dict:
    return {**payload, "tenant": scope.tenant, "collection": scope.collection}


def hit_from_payload(point_id, score: float, payload: dict) -> Hit:
    return Hit(
        id=str(point_id),
        doc_id=payload["doc_id"],
        source=payload["source"],
        chunk_index=int(payload["chunk_index"]),
        text=payload["text"],
        score=float(score),
        char_start=int(payload.get("char_start", 0)),
        char_end=int(payload.get("char_end", 0)),
    )
