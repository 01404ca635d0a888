"""Typed view of GET /admin/alerts (shape: appliance/server/alerts.py, docs/api.md).

parse_alerts accepts the document exactly as the server sends it and fails with ValueError when an
alert lacks a field the panel needs, so a server the dashboard cannot read says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

SEVERITY_ORDER = {"page": 0, "ticket": 1, "warning": 2}


@dataclass(slots=True, frozen=True)
class AlertRow:
    name: str
    severity: str
    firing: bool
    since: float  # epoch seconds
    summary: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def label_text(self) -> str:
        """'tenant=acme', 'window=5m/1h', '' without labels."""
        return " ".join(f"{k}={v}" for k, v in sorted(self.labels.items()))


def parse_alerts(doc: object) -> list[AlertRow]:
    """The alerts, firing first (pages, tickets, warnings), then by name and labels."""
    if not isinstance(doc, dict) or not isinstance(doc.get("alerts"), list):
        raise ValueError("the alerts document has no 'alerts' list")
    rows = [_row(item) for item in doc["alerts"]]
    return sorted(rows, key=lambda r: (not r.firing, SEVERITY_ORDER.get(r.severity, 9), r.name, r.label_text))


def _row(item: object) -> AlertRow:
    if not isinstance(item, dict):
        raise ValueError(f"an alert is {item!r}, not an object")
    try:
        state, since, labels = item["state"], item["since"], item.get("labels") or {}
        if state not in ("firing", "ok"):
            raise ValueError(f"alert state {state!r} is neither firing nor ok")
        return AlertRow(str(item["name"]), str(item["severity"]), state == "firing",
                        datetime.fromisoformat(str(since)).timestamp(), str(item["summary"]),
                        {str(k): str(v) for k, v in dict(labels).items()})
    except KeyError as exc:
        raise ValueError(f"an alert lacks the field {exc.args[0]!r}") from None
