"""Per-collection settings: one SQLite row per (tenant, collection), in the data dir next to the catalog.

A collection exists through its documents' catalog rows; its settings live in a table of their own,
so deleting its last document keeps them and a later ingest finds them again. A missing row or a
null field means "inherit": the appliance applies its server-wide default. Values are stored as
given; the appliance checks them (which `kv_reuse` modes exist is the engine's business).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from rag.catalog import open_database
from rag.types import Scope


@dataclass(slots=True, frozen=True)
class CollectionSettings:
    kv_reuse: str | None = None  # "prefix" | "chunks"; None: the server's rag_kv_reuse


SETTING_FIELDS = tuple(f.name for f in fields(CollectionSettings))
_KEY = ("tenant", "collection")


class CollectionSettingsTable:
    def __init__(self, path: Path) -> None:
        self._db = open_database(path)
        self._lock = threading.Lock()
        self._table = self._db.table("collection_settings")
        if not self._table.exists():
            self._table.create({"tenant": str, "collection": str, **dict.fromkeys(SETTING_FIELDS, str)},
                               pk=_KEY)

    def get(self, scope: Scope) -> CollectionSettings:
        with self._lock:
            return self._get(scope)

    def update(self, scope: Scope, changes: Mapping[str, str | None]) -> CollectionSettings:
        """Set the named fields (None: inherit again); the others keep their values."""
        unknown = sorted(set(changes) - set(SETTING_FIELDS))
        if unknown:
            raise ValueError(f"unknown collection setting {unknown[0]!r}; known: {', '.join(SETTING_FIELDS)}")
        with self._lock:
            self._table.upsert({"tenant": scope.tenant, "collection": scope.collection, **changes}, pk=_KEY)
            return self._get(scope)

    def delete_tenant(self, tenant: str) -> int:
        """Delete every settings row of `tenant`; returns how many there were."""
        with self._lock:
            count = self._table.count_where("tenant = ?", [tenant])
            self._table.delete_where("tenant = ?", [tenant])
        return count

    def close(self) -> None:
        with self._lock:
            self._db.conn.close()

    def _get(self, scope: Scope) -> CollectionSettings:
        rows = list(self._table.rows_where("tenant = ? and collection = ?", [scope.tenant, scope.collection],
                                           select=", ".join(SETTING_FIELDS)))
        return CollectionSettings(**rows[0]) if rows else CollectionSettings()
