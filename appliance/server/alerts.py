"""Alerts: the state of every rule instance, updated each time the rules are evaluated.

Every rule instance (a rule and one label set: a burn window, a tenant) is an alert that is either
firing or ok, with the time it entered that state. Rules without labels exist from start-up; a
tenant's alert appears the first time the tenant has traffic the rule looks at, and stays listed
(ok) once it clears. Transitions are logged. alert_routes runs the evaluations and serves the list.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from appliance.server.alert_rules import Labels, Rule, rules_from_config
from appliance.server.signals import History, Sample
from appliance.server.slo import parse_windows

if TYPE_CHECKING:
    from appliance.server.config import ServerConfig

log = logging.getLogger(__name__)
SEVERITY_ORDER = {"page": 0, "ticket": 1, "warning": 2}
RESOLUTION_PER_WINDOW = 20  # samples kept per shortest window


@dataclass(slots=True)
class Alert:
    name: str
    severity: str
    labels: Labels
    firing: bool
    since: float  # wall clock (time.time()) when it entered this state
    summary: str

    def to_dict(self) -> dict:
        return {"name": self.name, "severity": self.severity, "state": "firing" if self.firing else "ok",
                "since": datetime.fromtimestamp(self.since, timezone.utc).isoformat(timespec="seconds"),
                "summary": self.summary, "labels": dict(self.labels)}

    def sort_key(self) -> tuple:
        return (not self.firing, SEVERITY_ORDER.get(self.severity, 9), self.name, self.labels)


class AlertEngine:
    def __init__(self, rules: list[Rule], history: History, wall: Callable[[], float] = time.time) -> None:
        self.rules = rules
        self.history = history
        self.wall = wall
        self.alerts: dict[tuple[str, Labels], Alert] = {}
        self.evaluate()

    @classmethod
    def from_config(cls, config: ServerConfig, start: float | None = None) -> AlertEngine:
        windows = parse_windows(config.slo_burn_windows)
        shortest = min([config.alert_window_s, *(w.short_s for w in windows)])
        longest = max([config.alert_window_s, *(w.long_s for w in windows)])
        start = time.monotonic() if start is None else start
        return cls(rules_from_config(config), History(start, longest, shortest / RESOLUTION_PER_WINDOW))

    def observe(self, sample: Sample) -> None:
        self.history.add(sample)
        self.evaluate()

    def evaluate(self) -> None:
        now = self.wall()
        for rule in self.rules:
            seen = set()
            for finding in rule.check(self.history):
                seen.add(finding.labels)
                self._update(rule, finding.labels, finding.firing, finding.summary, now)
            gone = [labels for name, labels in self.alerts if name == rule.name and labels not in seen]
            for labels in gone:
                self._update(rule, labels, False, rule.idle_summary, now)

    def _update(self, rule: Rule, labels: Labels, firing: bool, summary: str, now: float) -> None:
        alert = self.alerts.get((rule.name, labels))
        if alert is None:
            alert = self.alerts[(rule.name, labels)] = Alert(rule.name, rule.severity, labels, firing, now,
                                                              summary)
            if firing:
                log.warning("alert firing: %s %s: %s", rule.name, dict(labels), summary)
            return
        if alert.firing != firing:
            alert.since = now
            log.warning("alert %s: %s %s: %s", "firing" if firing else "resolved", rule.name, dict(labels),
                        summary)
        alert.firing, alert.summary = firing, summary

    def snapshot(self) -> list[dict]:
        """Firing first (pages, then tickets, then warnings), then the rest by name."""
        return [alert.to_dict() for alert in sorted(self.alerts.values(), key=Alert.sort_key)]

    @property
    def num_firing(self) -> int:
        return sum(alert.firing for alert in self.alerts.values())
