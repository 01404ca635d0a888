"""Where request spans go: the process's tracer provider, the rings of finished traces, OTLP export.

One SDK TracerProvider serves the process and is made the global one, so that libraries using the
OpenTelemetry API (rag/retrieval.py) join the request's trace. Its sampler records a trace only from
a request's root span (kind SERVER): a library span with no request around it costs next to nothing.
A process-wide collector gathers the spans of each running trace and, when its root ends, files the
finished trace in the ring of the app that started it (tests run several apps in one process), as a
plain dict for `GET /admin/traces`. With an OTLP endpoint every span is also exported in batches by
the SDK's own thread, off the request path (the `otlp` extra: `pip install 'appliance[otlp]'`).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import SpanKind, format_trace_id

RING_SIZE = 500
ORDERS = ("recent", "slowest")


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


COLLECTOR = _Collector()
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
            current.add_span_processor(COLLECTOR)
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
