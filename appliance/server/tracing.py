"""Request traces: one OpenTelemetry trace per API request, kept in memory and optionally exported.

Every `/v1` request gets a root span (the whole request, kind SERVER) whose children are its stages,
one after another: `auth`; `embed` and `search` for retrieval (opened by rag/retrieval.py through
the OpenTelemetry API, in the worker thread that runs them: the root span is current there because
`asyncio.to_thread` carries the context); `prompt` (assembly and tokenization); then, placed by the
engine's own clock, `queue` (handed to the engine until first scheduled), `prefill` (until the first
token; cached vs computed prompt tokens), `decode` (until the last token); and `stream` (an SSE
response: until the last event is written) or `respond` (a JSON one: until the body is built). A
request that ends in the engine before its first token has one `engine` stage instead of the three.
The stages follow one another, so their durations add up to the request's, less the small gaps
between them (reading the body, thread hand-offs, admission).

One SDK TracerProvider serves the process and is made the global one, so that libraries using the
API join the same traces. A process-wide collector hands each ended span to the ring of the app that
started its trace: the ring keeps the last RING_SIZE finished traces as plain dicts for
`GET /admin/traces` and the dashboard. With `otlp_endpoint` set (APPLIANCE_OTLP_ENDPOINT, the
collector's OTLP/HTTP traces URL) every span is also exported in batches, off the request path; that
needs the optional `otlp` extra (`pip install 'appliance[otlp]'`). Admin calls and probes are not
traced: the dashboard's polling would push the requests out of the ring.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import SpanKind, Status, StatusCode, format_trace_id

if TYPE_CHECKING:
    from engine import RequestOutput

TRACE_HEADER = "X-Trace-Id"
TRACED_PREFIX = "/v1/"
RING_SIZE = 500
ORDERS = ("recent", "slowest")


# --- the process's provider and the collector that feeds the rings ----------------------------------
class _Collector(SpanProcessor):
    """Gathers the spans of each running trace and, when its root ends, hands the finished trace to
    the ring of the app that started it. Spans of traces no app started are dropped."""

    def __init__(self) -> None:
        self._open: dict[int, _OpenTrace] = {}
        self._lock = threading.Lock()

    def watch(self, root: trace.Span, ring: TraceRing) -> None:
        context = root.get_span_context()
        with self._lock:
            self._open[context.trace_id] = _OpenTrace(context.span_id, ring)

    def on_end(self, span: ReadableSpan) -> None:
        trace_id = span.context.trace_id
        with self._lock:
            open_trace = self._open.get(trace_id)
            if open_trace is None:
                return
            if span.context.span_id != open_trace.root_span_id:
                open_trace.spans.append(span)
                return
            del self._open[trace_id]
        open_trace.ring.add(trace_record(span, open_trace.spans))


@dataclass(slots=True)
class _OpenTrace:
    root_span_id: int
    ring: TraceRing
    spans: list[ReadableSpan] = field(default_factory=list)


class _RequestRoots(Sampler):
    """A trace starts only at a request's root span (kind SERVER): a library's span with no request
    around it (a retrieval run outside the server, or while tracing is off) is not even recorded."""

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                      trace_state=None) -> SamplingResult:
        if kind is SpanKind.SERVER:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, trace_state)
        return SamplingResult(Decision.DROP, None, trace_state)

    def get_description(self) -> str:
        return "RequestRoots"


_COLLECTOR = _Collector()
_PROVIDER: TracerProvider | None = None
_EXPORTS: set[str] = set()
_LOCK = threading.Lock()


def provider() -> TracerProvider:
    """The process's SDK TracerProvider (made the global one on first use), the collector attached."""
    global _PROVIDER
    with _LOCK:
        if _PROVIDER is None:
            current = trace.get_tracer_provider()
            if not isinstance(current, TracerProvider):
                current = TracerProvider(resource=Resource.create({SERVICE_NAME: "appliance"}),
                                         sampler=ParentBased(_RequestRoots()))
                trace.set_tracer_provider(current)
            current.add_span_processor(_COLLECTOR)
            _PROVIDER = current
        return _PROVIDER


def export_otlp(endpoint: str) -> None:
    """Export every span to an OTLP/HTTP collector, in batches (once per endpoint and process).
    Needs the `otlp` extra (the config refuses an endpoint without it)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    with _LOCK:
        if endpoint in _EXPORTS:
            return
        _EXPORTS.add(endpoint)
    provider().add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))


# --- the ring of finished traces ----------------------------------------------------------------------
class TraceRing:
    """The last `size` finished traces of one app, as plain dicts."""

    def __init__(self, size: int = RING_SIZE) -> None:
        self._done: deque[dict] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, record: dict) -> None:
        with self._lock:
            self._done.append(record)

    def traces(self, limit: int, order: str = "recent") -> list[dict]:
        """Newest first, or slowest first among the traces the ring holds."""
        with self._lock:
            records = list(self._done)
        if order == "slowest":
            records.sort(key=lambda r: r["duration_ms"], reverse=True)
        else:
            records.reverse()
        return records[:limit]


def trace_record(root: ReadableSpan, spans: list[ReadableSpan]) -> dict:
    """A finished trace as `GET /admin/traces` shows it: times in ms from the request's start."""
    names = {s.context.span_id: s.name for s in spans}
    start = root.start_time or 0
    attrs = root.attributes or {}
    return {
        "trace_id": format_trace_id(root.context.trace_id),
        "request_id": attrs.get("appliance.request_id"),
        "tenant": attrs.get("appliance.tenant"),
        "method": attrs.get("http.request.method"),
        "route": attrs.get("http.route"),
        "status": attrs.get("http.response.status_code"),
        "error": attrs.get("appliance.error_code"),
        "started_at": start / 1e9,
        "duration_ms": _ms((root.end_time or start) - start),
        "spans": [{"name": s.name, "parent": names.get(s.parent.span_id) if s.parent else None,
                   "start_ms": _ms((s.start_time or start) - start),
                   "duration_ms": _ms((s.end_time or 0) - (s.start_time or 0)),
                   "attributes": dict(s.attributes or {})}
                  for s in sorted(spans, key=lambda s: s.start_time or 0)],
    }


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


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
    def is_recording(self) -> bool:
        return self._root is not None

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
        self.ring = TraceRing()
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
        _COLLECTOR.watch(root, self.ring)
        return RequestTrace(self._tracer, root)

    def traces(self, limit: int, order: str = "recent") -> list[dict]:
        return self.ring.traces(limit, order)
