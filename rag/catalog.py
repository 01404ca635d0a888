"""The document catalog: one SQLite row per document (sqlite-utils, in the data dir).

It records the content hash of the version fully present in the vector store and whether a write
is in flight. A row in state `ingesting` after a crash means "the store may hold a partial set":
the next run redoes that document, and deterministic point ids make the redo converge.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlite_utils

from rag.types import CollectionInfo, DocInfo, Scope

READY, INGESTING, FAILED = "ready", "ingesting", "failed"


@dataclass(slots=True, frozen=True)
class CatalogEntry:
    doc_id: str
    source: str
    content_sha256: str  # of the version fully in the store, "" when none ever completed
    pipeline: str
    status: str
    chunks: int

    def is_current(self, sha256: str, pipeline: str) -> bool:
        return self.status == READY and self.content_sha256 == sha256 and self.pipeline == pipeline


class Catalog:
    def __init__(self, path: Path) -> None:
        self._db = open_database(path)
        self._lock = threading.Lock()
        self._table = self._create_table()

    def _create_table(self) -> sqlite_utils.db.Table:
        table = self._db.table("documents")
        if not table.exists():
            table.create(
                {
                    "doc_id": str,
                    "tenant": str,
                    "collection": str,
                    "source": str,
                    "content_sha256": str,
                    "pending_sha256": str,
                    "pipeline": str,
                    "chunks": int,
                    "status": str,
                    "error": str,
                    "updated_at": str,
                },
                pk="doc_id",
                not_null={"tenant", "collection", "source", "status"},
            )
            table.create_index(["tenant", "collection"])
        return table

    def get(self, doc_id: str) -> CatalogEntry | None:
        with self._lock:
            rows = list(self._table.rows_where("doc_id = ?", [doc_id]))
        if not rows:
            return None
        row = rows[0]
        return CatalogEntry(
            row["doc_id"],
            row["source"],
            row["content_sha256"] or "",
            row["pipeline"] or "",
            row["status"],
            row["chunks"] or 0,
        )

    def begin(self, scope: Scope, doc_id: str, source: str, sha256: str, pipeline: str) -> None:
        """Mark a write in flight (keeping the hash of the last complete version)."""
        row = {
            "doc_id": doc_id,
            "tenant": scope.tenant,
            "collection": scope.collection,
            "source": source,
            "pending_sha256": sha256,
            "pipeline": pipeline,
            "status": INGESTING,
            "error": None,
            "updated_at": _now(),
        }
        with self._lock:
            self._table.upsert(row, pk="doc_id", alter=False)

    def finish(self, doc_id: str, sha256: str, num_chunks: int) -> None:
        row = {
            "content_sha256": sha256,
            "pending_sha256": None,
            "chunks": num_chunks,
            "status": READY,
            "error": None,
            "updated_at": _now(),
        }
        with self._lock:
            self._table.update(doc_id, row)

    def fail(self, doc_id: str, error: str) -> None:
        with self._lock:
            self._table.update(doc_id, {"status": FAILED, "error": error, "updated_at": _now()})

    def delete(self, doc_id: str) -> bool:
        with self._lock:
            existed = bool(list(self._table.rows_where("doc_id = ?", [doc_id], select="doc_id")))
            self._table.delete_where("doc_id = ?", [doc_id])
        return existed

    def delete_tenant(self, tenant: str) -> int:
        """Delete every document row of `tenant`; returns how many there were."""
        with self._lock:
            count = self._table.count_where("tenant = ?", [tenant])
            self._table.delete_where("tenant = ?", [tenant])
        return count

    def documents(self, scope: Scope) -> list[DocInfo]:
        with self._lock:
            rows = list(
                self._table.rows_where(
                    "tenant = ? and collection = ?",
                    [scope.tenant, scope.collection],
                    order_by="source, doc_id",
                )
            )
        return [_doc_info(row) for row in rows]

    def find(self, scope: Scope, doc_id: str) -> DocInfo | None:
        with self._lock:
            rows = list(
                self._table.rows_where(
                    "tenant = ? and collection = ? and doc_id = ?", [scope.tenant, scope.collection, doc_id]
                )
            )
        return _doc_info(rows[0]) if rows else None

    def collections(self, tenant: str) -> list[CollectionInfo]:
        sql = (
            "select collection, count(*) as documents, coalesce(sum(chunks), 0) as chunks "
            "from documents where tenant = ? group by collection order by collection"
        )
        with self._lock:
            rows = list(self._db.query(sql, [tenant]))
        return [CollectionInfo(r["collection"], r["documents"], r["chunks"]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.conn.close()


def open_database(path: Path) -> sqlite_utils.Database:
    """An autocommit WAL connection usable from any thread (callers serialise with their own lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db = sqlite_utils.Database(connection)
    db.enable_wal()
    return db


def _doc_info(row: dict) -> DocInfo:
    sha = row["content_sha256"] or row["pending_sha256"] or ""
    return DocInfo(row["doc_id"], row["source"], row["chunks"] or 0, sha, row["status"], row["updated_at"])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
