"""Typed view of `GET /admin/traces`: recent requests, each with its stages (appliance/server/tracing.py).

`parse_traces` accepts the JSON exactly as the server sends it and fails with ValueError when a field
the requests screen needs is absent or of the wrong type, so a server the dashboard cannot read says
so instead of showing an empty list.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class Stage:
    """One span of a trace; times in ms from the start of the request."""

    name: str
    parent: str | None
    start_ms: float
    duration_ms: float
    attributes: dict = field(default_factory=dict)

    @property
    def end_ms(self) -> float:
        return self.start_ms + self.duration_ms


@dataclass(slots=True, frozen=True)
class Trace:
    trace_id: str
    tenant: str | None
    method: str
    route: str
    status: int
    started_at: float  # seconds since the epoch
    duration_ms: float
    stages: tuple[Stage, ...]

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    @property
    def ttft_ms(self) -> float | None:
        """From the request's start to its first token: the end of the prefill stage."""
        prefill = self.stage("prefill")
        return None if prefill is None else prefill.end_ms

    @property
    def prompt_tokens(self) -> tuple[int, int] | None:
        """(cached, total) prompt tokens, when the request reached the engine."""
        prefill = self.stage("prefill")
        if prefill is None:
            return None
        attrs = prefill.attributes
        return int(attrs.get("appliance.cached_tokens", 0)), int(attrs.get("appliance.prompt_tokens", 0))


@dataclass(slots=True, frozen=True)
class TraceList:
    enabled: bool  # the server traces requests at all
    order: str  # "recent" or "slowest"
    traces: tuple[Trace, ...]


def parse_traces(doc: object) -> TraceList:
    if not isinstance(doc, dict) or not isinstance(doc.get("traces"), list):
        raise ValueError("no 'traces' list")
    return TraceList(bool(doc.get("enabled", True)), str(doc.get("order", "recent")),
                     tuple(_trace(t) for t in doc["traces"]))


def _trace(item: object) -> Trace:
    if not isinstance(item, dict) or not isinstance(item.get("spans"), list):
        raise ValueError("a trace without 'spans'")
    tenant = item.get("tenant")
    return Trace(_str(item, "trace_id"), str(tenant) if tenant is not None else None, _str(item, "method"),
                 _str(item, "route"), int(_number(item, "status")), _number(item, "started_at"),
                 _number(item, "duration_ms"), tuple(_stage(s) for s in item["spans"]))


def _stage(item: object) -> Stage:
    if not isinstance(item, dict):
        raise ValueError("a span that is not an object")
    parent, attributes = item.get("parent"), item.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ValueError("span 'attributes' is not an object")
    return Stage(_str(item, "name"), str(parent) if parent is not None else None,
                 _number(item, "start_ms"), _number(item, "duration_ms"), attributes)


def _str(item: dict, key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise ValueError(f"'{key}' is not a string")
    return value


def _number(item: dict, key: str) -> float:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"'{key}' is not a number")
    return float(value)
