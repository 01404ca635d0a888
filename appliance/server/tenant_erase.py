"""Deleting a tenant erases everything of it the appliance holds (data privacy, compliance).

The order matters: first its keys are revoked, so nothing new of it gets in; then its in-flight
requests are aborted and given a bounded time to end (their KV blocks are only freed once they
end, and an upload in flight could otherwise add chunks after the erase); then its collections,
chunks and catalog rows go, then its cached KV blocks, and last, in one SQLite transaction, its
keys, usage rows and the tenant itself, together with the one audit row that lists what was erased.

The offline path (`appliance tenants delete` with no server running) does the same minus the
requests and KV cache, which only exist inside a running server.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from appliance.server.store import ADMIN_TENANT, ControlStore, StoreError, UnknownTenantError

if TYPE_CHECKING:
    from appliance.server.state import AppState
    from rag import RagService

ABORT_WAIT_S = 30.0
AUDIT_FLUSH_S = 10.0
POLL_S = 0.05
ABORT_REASON = "tenant_deleted"


def check_deletable(store: ControlStore, name: str) -> None:
    if name == ADMIN_TENANT:
        raise StoreError("the admin tenant cannot be deleted", "name")
    if store.get_tenant(name) is None:
        raise UnknownTenantError(name)


async def erase_tenant(state: AppState, name: str, key_id: str | None, request_id: str) -> dict:
    """Erase tenant `name` from a running server; returns the counts written to the audit row."""
    store = state.store
    await asyncio.to_thread(check_deletable, store, name)
    state.need_engine()
    rag = state.need_rag()
    await asyncio.to_thread(store.revoke_tenant_keys, name)
    erased = {"requests_aborted": await abort_requests(state, name)}
    erased.update(_counts(await asyncio.to_thread(rag.delete_tenant, name)))
    erased["kv_blocks"] = 0
    for engine in state.engines:  # every loaded model version holds its own KV; pinned blocks too
        erased["kv_blocks"] += await asyncio.to_thread(engine.erase_salt, name)
    await state.control.flush(AUDIT_FLUSH_S)  # its requests' audit rows are in before prompts are blanked
    counts = await asyncio.to_thread(store.delete_tenant, name, erased, key_id, request_id)
    state.control.usage.forget(name)
    return counts


async def abort_requests(state: AppState, name: str, wait_s: float = ABORT_WAIT_S) -> int:
    """Abort the tenant's admitted requests and wait (bounded) until they have ended."""
    tickets = [t for t in list(state.admission.tickets.values()) if t.tenant == name]
    for ticket in tickets:
        ticket.abort_reason = ABORT_REASON
        if state.fleet is not None:
            state.fleet.abort_everywhere(ticket.request_id)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(t.request_id in state.admission.tickets for t in tickets):
        await asyncio.sleep(POLL_S)
    return len(tickets)


def erase_offline(store: ControlStore, rag: RagService, name: str) -> dict:
    """Erase tenant `name` with no server running (the CLI owns the data dir)."""
    check_deletable(store, name)
    store.revoke_tenant_keys(name)
    erased = _counts(rag.delete_tenant(name))
    return store.delete_tenant(name, erased)


def _counts(report: dict) -> dict[str, int]:
    """The vector store's report, keeping the counts (the audit row lists numbers only)."""
    return {str(k): int(v) for k, v in report.items() if isinstance(v, int) and not isinstance(v, bool)}
