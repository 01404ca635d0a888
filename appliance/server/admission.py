"""Backpressure, pause and drain: who may enter the engine now.

The engine's own waiting queue is unbounded, so the server bounds it: a request counts as queued
from admission until its first token, and new requests are refused (503 + Retry-After) once the
queued requests or their prompt tokens pass the configured bounds. Pausing (operator) and draining
(SIGTERM) refuse new requests the same way while in-flight ones go on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from appliance.server.errors import ApiError, unavailable

RETRY_AFTER_FULL_S = 2
RETRY_AFTER_PAUSED_S = 5
RETRY_AFTER_DRAINING_S = 10


@dataclass(slots=True, eq=False)
class Ticket:
    request_id: str
    num_tokens: int
    is_queued: bool = True
    abort_reason: str | None = None  # set when the server (not the client) ends the request


class Admission:
    def __init__(self, max_queued_requests: int, max_queued_tokens: int) -> None:
        self.max_queued_requests = max_queued_requests
        self.max_queued_tokens = max_queued_tokens
        self.is_paused = False
        self.is_draining = False
        self.tickets: dict[str, Ticket] = {}
        self.num_queued = 0
        self.num_queued_tokens = 0
        self.num_active = 0  # HTTP requests being handled (probes excluded)
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

    def admit(self, request_id: str, num_tokens: int) -> Ticket:
        self.check_open()
        if self.num_queued >= self.max_queued_requests:
            raise self._full("requests")
        if self.num_queued > 0 and self.num_queued_tokens + num_tokens > self.max_queued_tokens:
            raise self._full("tokens")
        ticket = Ticket(request_id, num_tokens)
        self.tickets[request_id] = ticket
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

    def release(self, ticket: Ticket) -> None:
        self.started(ticket)
        self.tickets.pop(ticket.request_id, None)

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
                "max_queued_requests": self.max_queued_requests, "max_queued_tokens": self.max_queued_tokens}
