"""Recent requests table: one row per traced request, keyed by its trace id."""

from __future__ import annotations

from datetime import datetime, timezone

from tui import format as fmt
from tui.traces import Trace
from tui.widgets.keyed_table import KeyedTable
from tui.widgets.waterfall import millis

ROUTE_NAMES = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/rag/query": "rag query",
               "/v1/rag/retrieve": "retrieve"}


def route_name(trace: Trace) -> str:
    """A short name for the route: 'rag query', 'chat', ..., else the last fixed part of its path
    ('documents'), after the method when it is not POST ('delete documents')."""
    name = ROUTE_NAMES.get(trace.route)
    if name is not None:
        return name
    fixed = [part for part in trace.route.split("/") if part and not part.startswith("{")]
    name = fixed[-1] if fixed else trace.route
    return name if trace.method == "POST" else f"{trace.method.lower()} {name}"


def trace_cells(trace: Trace) -> tuple[str, ...]:
    """The start time is UTC, as the trace carries it: the same on every operator's screen."""
    started = datetime.fromtimestamp(trace.started_at, timezone.utc).strftime("%H:%M:%S")
    tokens = trace.prompt_tokens
    cached = f"{fmt.count(tokens[0])}/{fmt.count(tokens[1])}" if tokens else fmt.DASH
    ttft = trace.ttft_ms
    return (started, trace.tenant or fmt.DASH, route_name(trace), str(trace.status),
            millis(trace.duration_ms), millis(ttft) if ttft is not None else fmt.DASH, cached,
            trace.trace_id[:8])


class TracesTable(KeyedTable):
    COLUMNS = (("UTC", "started", False), ("tenant", "tenant", False), ("route", "route", False),
               ("status", "status", True), ("took", "took", True), ("TTFT", "ttft", True),
               ("cached", "cached", True), ("trace", "trace", False))

    def show(self, traces: tuple[Trace, ...]) -> None:
        self.sync([(trace.trace_id, trace_cells(trace)) for trace in traces])
