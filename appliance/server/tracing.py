"""Request traces: one OpenTelemetry trace per API request, kept in memory and optionally exported.

Every `/v1` request gets a root span (the whole request, kind SERVER) whose children are its stages,
one after another: `auth`; `embed` and `search` for retrieval (opened by rag/retrieval.py through
the OpenTelemetry API, in the worker thread that runs them: the root span is current there because
`asyncio.to_thread` carries the context); `prompt` (assembly and tokenization); then, placed by the
engine's own clock, `queue` (handed to the engine until first scheduled), `prefill` (until the first
token; cached vs computed prompt tokens), `decode` (until the last token); and `stream` (an SSE
response: until the last event is written) or `respond` (a JSON one: until the body is built). A
request that ends in the engine before its first token has one `engine` stage instead of the three;
a document upload has `upload` (receiving the files) and `ingest`.
The stages follow one another, so their durations add up to the request's, less the small gaps
between them (reading the body, thread hand-offs, admission).

The server keeps the last finished traces in a ring for `GET /admin/traces` and the dashboard, and
with `otlp_endpoint` set (APPLIANCE_OTLP_ENDPOINT, a collector's OTLP/HTTP traces URL) exports every
span (see trace_sink). Admin calls and probes are not traced: the dashboard's polling would push the
requests out of the ring.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, format_trace_id

from appliance.server.trace_sink import COLLECTOR, TraceRing, export_otlp, provider

if TYPE_CHECKING:
    from engine import RequestOutput

TRACE_HEADER = "X-Trace-Id"
TRACED_PREFIX = "/v1/"


# --- one request --------------------------------------------------------------------------------------
@dataclass(slots=True)
class EngineTimes:
    """The engine's clock (time.monotonic()) at the edges of one request's time in the engine."""

    submitted: float
    scheduled: float | None = None  # first scheduled step
    first_token: float | None = None
    ended: float | None = None  # the latest output the engine made for it

    def see(self, out: RequestOutput) -> None:
        if out.scheduled_at is not None:
            self.scheduled = out.scheduled_at
        if out.token_ids and self.first_token is None:
            self.first_token = out.created_at
        self.ended = out.created_at


def _wall_ns(monotonic_s: float) -> int:
    """A time.monotonic() reading as the wall-clock nanoseconds spans carry."""
    return time.time_ns() - int((time.monotonic() - monotonic_s) * 1e9)


class RequestTrace:
    """One request's root span and its stages. A request that is not traced gets NO_TRACE, whose
    methods do nothing, so the request path calls them unconditionally."""

    __slots__ = ("_context", "_root", "_tail_from", "_tracer")

    def __init__(self, tracer: trace.Tracer | None = None, root: trace.Span | None = None) -> None:
        self._tracer, self._root = tracer, root
        self._context = trace.set_span_in_context(root) if root is not None else None
        self._tail_from: float | None = None  # where the stream/respond stage starts (engine clock)

    @property
    def trace_id(self) -> str | None:
        return format_trace_id(self._root.get_span_context().trace_id) if self._root is not None else None

    def headers(self) -> dict[str, str]:
        return {TRACE_HEADER: self.trace_id} if self._root is not None else {}

    @contextmanager
    def current(self) -> Iterator[None]:
        """The root span is the current span inside the block (spans opened there are its children)."""
        if self._context is None:
            yield
            return
        token = otel_context.attach(self._context)
        try:
            yield
        finally:
            otel_context.detach(token)

    @contextmanager
    def stage(self, name: str, attributes: dict | None = None) -> Iterator[None]:
        """A stage span around the block; an exception leaving it marks the stage as failed."""
        if self._tracer is None:
            yield
            return
        span = self._tracer.start_span(name, context=self._context, attributes=_clean(attributes or {}))
        try:
            yield
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

    def engine_stages(self, times: EngineTimes, prompt_tokens: int, cached_tokens: int,
                      output_tokens: int, finish_reason: str) -> None:
        """The queue, prefill and decode stages from the engine's clock, once the engine is done."""
        if self._tracer is None:
            return
        ended = times.ended if times.ended is not None else time.monotonic()
        if times.scheduled is None or times.first_token is None:
            self._span("engine", times.submitted, ended, {"appliance.first_token": False,
                                                          "appliance.finish_reason": finish_reason})
        else:
            scheduled = max(times.scheduled, times.submitted)
            self._span("queue", times.submitted, scheduled, {})
            self._span("prefill", scheduled, times.first_token, {
                "appliance.prompt_tokens": prompt_tokens, "appliance.cached_tokens": cached_tokens,
                "appliance.computed_tokens": prompt_tokens - cached_tokens})
            self._span("decode", times.first_token, ended, {"appliance.output_tokens": output_tokens,
                                                            "appliance.finish_reason": finish_reason})
        self._tail_from = ended

    def end(self, status: int, tenant: str | None, error_code: str | None, streamed: bool) -> None:
        """End the request: the stream/respond stage (when it reached the engine), then the root."""
        if self._tracer is None or self._root is None:
            return
        if self._tail_from is not None:
            self._span("stream" if streamed else "respond", self._tail_from, time.monotonic(), {})
        self._root.set_attributes(_clean({"http.response.status_code": status, "appliance.tenant": tenant,
                                          "appliance.error_code": error_code}))
        if status >= 500:
            self._root.set_status(Status(StatusCode.ERROR, error_code or str(status)))
        self._root.end()

    def _span(self, name: str, start: float, end: float, attributes: dict) -> None:
        assert self._tracer is not None
        span = self._tracer.start_span(name, context=self._context, attributes=attributes,
                                       start_time=_wall_ns(start))
        span.end(end_time=_wall_ns(max(start, end)))


def _clean(attributes: dict) -> dict:
    """OpenTelemetry attribute values cannot be None."""
    return {k: v for k, v in attributes.items() if v is not None}


NO_TRACE = RequestTrace()


# --- the app's tracing ---------------------------------------------------------------------------------
class Tracing:
    """An app's tracing: starts request traces and keeps its ring. Off: every request gets NO_TRACE.
    It can be switched at run time (`POST /admin/tracing`); the ring keeps what it holds."""

    def __init__(self, enabled: bool, otlp_endpoint: str | None = None) -> None:
        self._ring = TraceRing()
        self.enabled = False
        self._otlp_endpoint = otlp_endpoint
        self._tracer: trace.Tracer | None = None
        self.set_enabled(enabled)

    def set_enabled(self, enabled: bool) -> None:
        if enabled and self._tracer is None:
            self._tracer = provider().get_tracer("appliance")
            if self._otlp_endpoint:
                export_otlp(self._otlp_endpoint)
        self.enabled = enabled

    def start(self, method: str, route: str, path: str, request_id: str) -> RequestTrace:
        """The trace of a new request (NO_TRACE when off or not an API request)."""
        if not self.enabled or self._tracer is None or not path.startswith(TRACED_PREFIX):
            return NO_TRACE
        root = self._tracer.start_span(f"{method} {route}", context=otel_context.Context(),
                                       kind=SpanKind.SERVER, attributes={
            "http.request.method": method, "http.route": route, "appliance.request_id": request_id})
        COLLECTOR.watch(root, self._ring)
        return RequestTrace(self._tracer, root)

    def traces(self, limit: int, order: str = "recent") -> list[dict]:
        return self._ring.traces(limit, order)
