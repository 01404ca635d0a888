"""Typed view of GET /admin/models: model versions, the canary split, routing rules and events.

Shape: appliance/server/model_routes.py. parse_models accepts the document exactly as the server sends
it and fails with ValueError naming what is missing, so a server the dashboard cannot read says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

ROLLBACKS = ("auto_rollback", "rollback")


@dataclass(slots=True, frozen=True)
class VersionWindow:
    """The version's traffic over the server's sliding window (window_s seconds)."""

    window_s: float = 0.0
    requests: int = 0
    errors: int = 0
    error_rate: float | None = None
    ttft_p50_s: float | None = None
    ttft_p90_s: float | None = None
    tpot_p50_s: float | None = None


@dataclass(slots=True, frozen=True)
class ModelVersion:
    name: str
    state: str  # live, canary, ready, loading, retired, failed
    quantization: str
    dtype: str
    notes: str = ""
    error: str | None = None
    canary_share: float = 0.0
    canary_tenants: tuple[str, ...] = ()
    loaded: bool = False
    memory_bytes: int = 0
    in_flight: int = 0
    requests_total: int = 0
    errors_total: int = 0
    window: VersionWindow = field(default_factory=VersionWindow)
    num_answers: int = 0
    groundedness_mean: float | None = None
    num_idk: int = 0
    routes: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class RoutingRule:
    name: str
    version: str
    tenant: str | None
    kind: str | None
    min_prompt_tokens: int | None
    max_prompt_tokens: int | None
    hits: int

    @property
    def condition(self) -> str:
        """'tenant=acme, prompt ≥ 40 tokens'; 'every request' for a rule without conditions."""
        parts = [f"tenant={self.tenant}"] if self.tenant else []
        parts += [f"kind={self.kind}"] if self.kind else []
        low, high = self.min_prompt_tokens, self.max_prompt_tokens
        if low is not None and high is not None:
            parts.append(f"prompt {low}-{high} tokens")
        elif low is not None:
            parts.append(f"prompt ≥ {low} tokens")
        elif high is not None:
            parts.append(f"prompt ≤ {high} tokens")
        return ", ".join(parts) or "every request"


@dataclass(slots=True, frozen=True)
class ModelEvent:
    time: float  # epoch seconds
    action: str
    version: str
    previous: str | None
    actor: str | None  # None: the server itself (an automatic rollback)
    reason: str | None

    @property
    def is_rollback(self) -> bool:
        return self.action in ROLLBACKS


@dataclass(slots=True, frozen=True)
class ModelsReport:
    served_model: str | None
    live: str | None
    canary: str | None
    canary_share: float
    canary_tenants: tuple[str, ...]
    previous_live: str | None
    budget_bytes: int
    used_bytes: int
    versions: list[ModelVersion]
    rules: list[RoutingRule]
    events: list[ModelEvent]  # newest first
    objective: dict[str, float] = field(default_factory=dict)

    def version(self, name: str | None) -> ModelVersion | None:
        return next((v for v in self.versions if v.name == name), None)

    @property
    def last_rollback(self) -> ModelEvent | None:
        """The newest rollback, automatic or not: what the panel explains first."""
        return next((e for e in self.events if e.is_rollback), None)

    @property
    def others(self) -> list[ModelVersion]:
        """Every version but the live one and the canary."""
        return [v for v in self.versions if v.name not in (self.live, self.canary)]


def parse_models(doc: object) -> ModelsReport:
    if not isinstance(doc, dict) or not isinstance(doc.get("versions"), list):
        raise ValueError("the models document has no 'versions' list (an appliance without model versions?)")
    try:
        memory = doc.get("memory") or {}
        return ModelsReport(
            _text(doc.get("served_model")), _text(doc.get("live")), _text(doc.get("canary")),
            float(doc.get("canary_share") or 0.0), tuple(str(t) for t in doc.get("canary_tenants") or ()),
            _text(doc.get("previous_live")), int(memory.get("budget_bytes") or 0),
            int(memory.get("used_bytes") or 0), [_version(v) for v in doc["versions"]],
            [_rule(r) for r in doc.get("rules") or []], [_event(e) for e in doc.get("events") or []],
            {str(k): float(v) for k, v in (doc.get("canary_objective") or {}).items() if v is not None})
    except KeyError as exc:
        raise ValueError(f"a model version, rule or event lacks the field {exc.args[0]!r}") from None
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"unreadable models document: {exc}") from None


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)


def _version(item: dict) -> ModelVersion:
    metrics = item.get("metrics") or {}
    answers = metrics.get("answers") or {}
    return ModelVersion(
        str(item["name"]), str(item["state"]), str(item.get("quantization") or ""),
        str(item.get("dtype") or ""),
        str(item.get("notes") or ""), _text(item.get("error")), float(item.get("canary_share") or 0.0),
        tuple(str(t) for t in item.get("canary_tenants") or ()), bool(item.get("loaded")),
        int(item.get("memory_bytes") or 0), int(item.get("in_flight") or 0),
        int(metrics.get("requests_total") or 0), int(metrics.get("errors_total") or 0),
        _window(metrics.get("window") or {}), int(answers.get("num_answers") or 0),
        _optional_float(answers.get("groundedness_mean")), int(answers.get("num_idk") or 0),
        {str(k): int(v) for k, v in (metrics.get("routes") or {}).items()})


def _window(item: dict) -> VersionWindow:
    return VersionWindow(float(item.get("window_s") or 0.0), int(item.get("requests") or 0),
                         int(item.get("errors") or 0), _optional_float(item.get("error_rate")),
                         _optional_float(item.get("ttft_p50_s")), _optional_float(item.get("ttft_p90_s")),
                         _optional_float(item.get("tpot_p50_s")))


def _rule(item: dict) -> RoutingRule:
    low, high = item.get("min_prompt_tokens"), item.get("max_prompt_tokens")
    return RoutingRule(str(item["name"]), str(item["version"]), _text(item.get("tenant")),
                       _text(item.get("kind")), None if low is None else int(low),
                       None if high is None else int(high), int(item.get("hits") or 0))


def _event(item: dict) -> ModelEvent:
    return ModelEvent(datetime.fromisoformat(str(item["time"])).timestamp(), str(item["action"]),
                      str(item["version"]), _text(item.get("previous")), _text(item.get("actor")),
                      _text(item.get("reason")))
