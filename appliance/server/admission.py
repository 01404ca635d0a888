"""Backpressure, pause and drain: who may enter the engine now, per server and per tenant.

The engine's own waiting queue is unbounded, so the server bounds it: a request counts as queued
from admission until its first token, and new requests are refused (503 + Retry-After) once the
queued requests or their prompt tokens pass the configured bounds. Pausing (operator) and draining
(SIGTERM) refuse new requests the same way while in-flight ones go on.

Per tenant, a cap on concurrent requests (admitted, not yet ended) and on queued prompt tokens keeps
one tenant from filling the queue and every running slot: over either cap is a 429 for that tenant
alone. Each tenant's in-flight tokens (prompt + generated so far) are summed here too, because the
daily quota counts them while they run. Uploads hold their bytes in memory until ingested, so the
bytes of uploads held at once are bounded per server (503 beyond).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from appliance.server.errors import ApiError, unavailable

RETRY_AFTER_FULL_S = 2
RETRY_AFTER_PAUSED_S = 5
RETRY_AFTER_DRAINING_S = 10
RETRY_AFTER_TENANT_S = 1
RETRY_AFTER_UPLOADS_S = 5


@dataclass(slots=True, frozen=True)
class TenantCaps:
    """A tenant's admission limits; None = no per-tenant limit (the server-wide bounds still hold)."""

    max_concurrent: int | None = None
    max_queued_tokens: int | None = None


@dataclass(slots=True)
class TenantLoad:
    inflight: int = 0
    queued_tokens: int = 0
    tokens: int = 0  # prompt + generated tokens of its in-flight requests, for the quota


@dataclass(slots=True, eq=False)
class Ticket:
    request_id: str
    num_tokens: int
    tenant: str = ""
    is_queued: bool = True
    tokens: int = 0  # counted toward the tenant's in-flight tokens
    abort_reason: str | None = None  # set when the server (not the client) ends the request


class Admission:
    def __init__(self, max_queued_requests: int, max_queued_tokens: int,
                 max_upload_inflight_bytes: int = 1 << 62) -> None:
        self.max_queued_requests = max_queued_requests
        self.max_queued_tokens = max_queued_tokens
        self.is_paused = False
        self.is_draining = False
        self.tickets: dict[str, Ticket] = {}
        self.tenants: dict[str, TenantLoad] = {}
        self.num_queued = 0
        self.num_queued_tokens = 0
        self.num_active = 0  # HTTP requests being handled (probes excluded)
        self.uploads = UploadBudget(max_upload_inflight_bytes)
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.num_active += 1
        self._idle.clear()

    def exit(self) -> None:
        self.num_active -= 1
        if self.num_active == 0:
            self._idle.set()

    def check_draining(self) -> None:
        if self.is_draining:
            raise unavailable("the server is shutting down", RETRY_AFTER_DRAINING_S, "server_shutting_down")

    def check_open(self) -> None:
        """Raise the 503 for a paused or draining server (before any work is done)."""
        self.check_draining()
        if self.is_paused:
            raise unavailable("admission is paused by the operator", RETRY_AFTER_PAUSED_S, "admission_paused")

    def admit(self, request_id: str, num_tokens: int, tenant: str = "",
              caps: TenantCaps | None = None) -> Ticket:
        self.check_open()
        load = self.tenants.get(tenant) or TenantLoad()
        _check_tenant(tenant, load, num_tokens, caps or TenantCaps())
        if self.num_queued >= self.max_queued_requests:
            raise self._full("requests")
        if self.num_queued > 0 and self.num_queued_tokens + num_tokens > self.max_queued_tokens:
            raise self._full("tokens")
        ticket = Ticket(request_id, num_tokens, tenant, tokens=num_tokens)
        self.tickets[request_id] = ticket
        self.tenants[tenant] = load
        load.inflight += 1
        load.queued_tokens += num_tokens
        load.tokens += num_tokens
        self.num_queued += 1
        self.num_queued_tokens += num_tokens
        return ticket

    def _full(self, what: str) -> ApiError:
        return unavailable(f"the server is at capacity (queued {what} limit); retry shortly",
                           RETRY_AFTER_FULL_S, "server_overloaded")

    def started(self, ticket: Ticket) -> None:
        """The request produced its first token: it no longer counts against the queue."""
        if ticket.is_queued:
            ticket.is_queued = False
            self.num_queued -= 1
            self.num_queued_tokens -= ticket.num_tokens
            self.tenants[ticket.tenant].queued_tokens -= ticket.num_tokens

    def count_tokens(self, ticket: Ticket, tokens: int) -> None:
        """The request now holds `tokens` (prompt + generated): update its tenant's in-flight sum."""
        self.tenants[ticket.tenant].tokens += tokens - ticket.tokens
        ticket.tokens = tokens

    def tenant_tokens(self, tenant: str) -> int:
        load = self.tenants.get(tenant)
        return load.tokens if load is not None else 0

    def release(self, ticket: Ticket) -> None:
        if self.tickets.pop(ticket.request_id, None) is None:
            return
        self.started(ticket)
        load = self.tenants[ticket.tenant]
        load.inflight -= 1
        load.tokens -= ticket.tokens
        if load.inflight == 0:
            del self.tenants[ticket.tenant]

    @property
    def num_inflight(self) -> int:
        return len(self.tickets)

    async def wait_idle(self, timeout: float) -> bool:
        """True when every active HTTP request finished within `timeout` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def snapshot(self) -> dict:
        return {"paused": self.is_paused, "draining": self.is_draining, "active_http": self.num_active,
                "inflight": self.num_inflight,
                "queued_requests": self.num_queued, "queued_tokens": self.num_queued_tokens,
                "max_queued_requests": self.max_queued_requests, "max_queued_tokens": self.max_queued_tokens,
                "upload_bytes": self.uploads.held, "max_upload_bytes": self.uploads.limit,
                "tenants": {name: {"inflight": load.inflight, "queued_tokens": load.queued_tokens}
                            for name, load in sorted(self.tenants.items())}}


def _check_tenant(tenant: str, load: TenantLoad, num_tokens: int, caps: TenantCaps) -> None:
    """429 for the tenant over its own caps; a lone request may exceed the token cap (else it never runs)."""
    if caps.max_concurrent is not None and load.inflight >= caps.max_concurrent:
        raise ApiError(429, f"tenant {tenant!r} already has {load.inflight} requests in flight, its limit "
                            f"of concurrent requests; retry when one ends", None, "tenant_concurrency_limit",
                       {"Retry-After": str(RETRY_AFTER_TENANT_S), "x-should-retry": "true"})
    limit = caps.max_queued_tokens
    if limit is not None and load.queued_tokens > 0 and load.queued_tokens + num_tokens > limit:
        raise ApiError(429, f"tenant {tenant!r} has {load.queued_tokens} prompt tokens waiting to start; "
                            f"{num_tokens} more would pass its limit of {limit} queued tokens",
                       None, "tenant_queue_limit",
                       {"Retry-After": str(RETRY_AFTER_TENANT_S), "x-should-retry": "true"})


@dataclass(slots=True)
class UploadBudget:
    """Bytes of uploads held in memory at once, across the server; beyond the limit: 503."""

    limit: int
    held: int = 0

    def reserve(self, num_bytes: int) -> None:
        if self.held + num_bytes > self.limit:
            raise unavailable(f"the server is holding {self.held} bytes of uploads, its limit is "
                              f"{self.limit}; retry shortly", RETRY_AFTER_UPLOADS_S, "upload_capacity")
        self.held += num_bytes

    def release(self, num_bytes: int) -> None:
        self.held -= num_bytes


@dataclass(slots=True)
class UploadHold:
    """One upload's share of the budget: grows as its bytes arrive, given back once it is ingested."""

    budget: UploadBudget
    reserved: int = 0
    released: bool = False

    def need(self, num_bytes: int) -> None:
        """Make sure `num_bytes` are reserved (503 when the budget cannot give them)."""
        if num_bytes > self.reserved:
            self.budget.reserve(num_bytes - self.reserved)
            self.reserved = num_bytes

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.budget.release(self.reserved)
