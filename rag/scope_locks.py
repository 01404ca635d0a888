"""One write lock per (tenant, collection): writes to one collection serialise, others run alongside.

A document's ingest (catalog row, chunks upserted window by window, stale chunks deleted, row
finalised) must not interleave with another write to the same collection, or the catalog and the
store could disagree. Different collections share nothing of that, so they get different locks and
two tenants' uploads embed at the same time. Several locks are always taken in sorted order, so
two multi-collection operations cannot deadlock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager

from rag.types import Scope


class ScopeLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}

    def of(self, scope: Scope) -> threading.Lock:
        key = (scope.tenant, scope.collection)
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    @contextmanager
    def holding(self, scopes: Iterable[Scope]) -> Iterator[None]:
        """Hold the locks of all `scopes` (taken in sorted order)."""
        ordered = sorted({(s.tenant, s.collection): s for s in scopes}.items())
        with ExitStack() as stack:
            for _, scope in ordered:
                stack.enter_context(self.of(scope))
            yield

    def known(self) -> list[Scope]:
        with self._guard:
            return [Scope(tenant, collection) for tenant, collection in self._locks]
