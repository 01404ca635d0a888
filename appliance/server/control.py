"""The event loop's face of the SQLite control store: lookups in worker threads, writes batched.

A SQLite call can wait up to the busy timeout (10 s) while another process (the `appliance` CLI)
holds the write lock, and the event loop must never wait with it: key and tenant lookups run in a
small dedicated thread pool (so they never queue behind tokenization or retrieval in the default
one), and audit and usage rows go through the AuditWriter thread.

The daily token quota must not lag behind those queued writes, so each tenant's usage of the day is
also kept in memory: seeded from SQLite the first time this process sees the tenant, then added to
the moment a request ends, before its row is written. Only the server writes usage rows, so after
the seed this running total is exact.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from appliance.server.audit_writer import AuditWriter
from appliance.server.store import AuditEntry, ControlStore, Principal, Tenant, utc_day

LOOKUP_THREADS = 2


@dataclass(slots=True, frozen=True)
class Identity:
    """Who presented a key: the principal and its tenant's row (None if the tenant is gone)."""

    principal: Principal
    tenant: Tenant | None


class UsageLedger:
    """Tokens (prompt + completion) each tenant used today, as the quota sees them."""

    def __init__(self) -> None:
        self._days: dict[str, tuple[str, int]] = {}  # tenant -> (UTC day, tokens that day)

    def is_seeded(self, tenant: str) -> bool:
        # An entry from an earlier day counts: this process has run since then, so it alone wrote
        # the tenant's usage of today, and every such write went through add().
        return tenant in self._days

    def seed(self, tenant: str, day: str, tokens: int) -> None:
        if tenant not in self._days:  # an add() that raced the seed read already knows better
            self._days[tenant] = (day, tokens)

    def used(self, tenant: str) -> int:
        entry = self._days.get(tenant)
        return entry[1] if entry is not None and entry[0] == utc_day() else 0

    def add(self, tenant: str, tokens: int) -> None:
        day = utc_day()
        entry = self._days.get(tenant)
        self._days[tenant] = (day, tokens + (entry[1] if entry is not None and entry[0] == day else 0))

    def forget(self, tenant: str) -> None:
        """The tenant's usage rows were erased: a tenant made later with its name starts from SQLite."""
        self._days.pop(tenant, None)


class ControlPlane:
    def __init__(self, store: ControlStore) -> None:
        self.store = store
        self.usage = UsageLedger()
        self.audit = AuditWriter(store)
        self._pool = ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="control-db")

    async def identify(self, key: str) -> Identity | None:
        """The principal and tenant for a presented key (None: unknown, wrong or revoked)."""
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(self._pool, self._lookup, key)
        if found is None:
            return None
        identity, day, used = found
        if used is not None:
            self.usage.seed(identity.principal.tenant, day, used)
        return identity

    def _lookup(self, key: str) -> tuple[Identity, str, int | None] | None:
        """Worker thread: the key, the tenant row and (once per tenant) today's usage from SQLite."""
        principal = self.store.authenticate(key)
        if principal is None:
            return None
        name = principal.tenant
        day = utc_day()
        used = None if self.usage.is_seeded(name) else self.store.tokens_today(name)
        return Identity(principal, self.store.get_tenant(name)), day, used

    async def record(self, entry: AuditEntry, count_usage: bool) -> None:
        """Hand the request's audit row (and usage, for inference) to the writer thread."""
        await self.audit.submit(entry, count_usage)

    async def flush(self, timeout: float) -> bool:
        return await self.audit.flush(timeout)

    def close(self) -> None:
        """Write every queued row and stop the threads (blocking: call it from a worker thread)."""
        self.audit.close()
        self._pool.shutdown(wait=True)
