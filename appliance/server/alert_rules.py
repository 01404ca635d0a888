"""The alert rules: each reads the signal history and says, per label set, whether it fires and why.

The same rules ship for Prometheus in deploy/prometheus/appliance-rules.yml (same names, labels and
conditions over the same counters), so an operator who runs Prometheus sees the alerts this server
shows in /admin/alerts and the dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from appliance.server.signals import UNKNOWN_TENANT, History
from appliance.server.slo import BurnWindow, Objective, burn_rate, format_duration, objectives, parse_windows

if TYPE_CHECKING:
    from appliance.server.config import ServerConfig

Labels = tuple[tuple[str, str], ...]
WARNING = "warning"


@dataclass(slots=True, frozen=True)
class Finding:
    labels: Labels
    firing: bool
    summary: str


class Rule(Protocol):
    name: str
    severity: str
    idle_summary: str  # for an instance this evaluation found nothing about (no traffic): it is ok

    def check(self, history: History) -> list[Finding]: ...


@dataclass(slots=True, frozen=True)
class BurnRateRule:
    """An objective burning its error budget at least `burn_rate` times too fast in both windows."""

    objective: Objective
    window: BurnWindow
    min_requests: int
    idle_summary: str = ""

    @property
    def name(self) -> str:
        return f"{self.objective.name}_burn_rate"

    @property
    def severity(self) -> str:
        return self.window.severity

    def check(self, history: History) -> list[Finding]:
        o, w = self.objective, self.window
        num_long = history.increase(o.total_series, w.long_s)
        long_rate = burn_rate(history.increase(o.bad_series, w.long_s), num_long, o.target)
        short_rate = burn_rate(history.increase(o.bad_series, w.short_s),
                               history.increase(o.total_series, w.short_s), o.target)
        firing = num_long >= self.min_requests and long_rate >= w.burn_rate and short_rate >= w.burn_rate
        summary = (f"{o.description} for {o.target * 100:g}% of requests: budget burning {long_rate:.1f}x "
                   f"over {format_duration(w.long_s)} ({num_long:.0f} requests), {short_rate:.1f}x over "
                   f"{format_duration(w.short_s)}; alert at {w.burn_rate:g}x")
        return [Finding((("window", w.label),), firing, summary)]


@dataclass(slots=True, frozen=True)
class PreemptionRule:
    """KV pressure: sequences preempted (recomputed later) because the KV pool ran out of blocks."""

    window_s: float
    per_min: float
    name: str = "kv_preemptions"
    severity: str = WARNING
    idle_summary: str = ""

    def check(self, history: History) -> list[Finding]:
        num = history.increase("preemptions", self.window_s)
        rate = num / self.window_s * 60.0
        summary = (f"{num:.0f} sequences preempted for lack of KV blocks in the last "
                   f"{format_duration(self.window_s)} ({rate:.1f}/min; alert at {self.per_min:g}/min)")
        return [Finding((), num > 0 and rate >= self.per_min, summary)]


@dataclass(slots=True, frozen=True)
class QueueRule:
    """A queue that is deep and deeper than one window ago: arrivals outpace the engine."""

    window_s: float
    min_depth: int
    name: str = "queue_growing"
    severity: str = WARNING
    idle_summary: str = ""

    def check(self, history: History) -> list[Finding]:
        depth, before = history.value("queue_depth"), history.value_before("queue_depth", self.window_s)
        summary = (f"{depth:.0f} requests queued, {before:.0f} {format_duration(self.window_s)} ago "
                   f"(alert at {self.min_depth} or more and growing)")
        return [Finding((), depth >= self.min_depth and depth > before, summary)]


@dataclass(slots=True, frozen=True)
class TenantErrorRule:
    """A tenant whose requests mostly fail (4xx or 5xx other than auth failures; 429s count)."""

    window_s: float
    min_ratio: float
    min_errors: int
    name: str = "tenant_error_spike"
    severity: str = WARNING

    @property
    def idle_summary(self) -> str:
        return f"no requests in the last {format_duration(self.window_s)}"

    def check(self, history: History) -> list[Finding]:
        findings = []
        for (tenant,) in history.label_sets("tenant.requests"):
            total = history.increase(("tenant.requests", tenant), self.window_s)
            if total == 0:
                continue
            errors = history.increase(("tenant.errors", tenant), self.window_s)
            firing = errors >= self.min_errors and errors / total >= self.min_ratio
            summary = (f"tenant {tenant}: {errors:.0f} of {total:.0f} requests failed in the last "
                       f"{format_duration(self.window_s)} (alert at {self.min_errors} or more and "
                       f"{self.min_ratio:.0%})")
            findings.append(Finding((("tenant", tenant),), firing, summary))
        return findings


@dataclass(slots=True, frozen=True)
class AuthFailureRule:
    """Many 401/403 answers: a leaked or revoked key in use, or someone guessing keys."""

    window_s: float
    threshold: int
    name: str = "auth_failure_spike"
    severity: str = WARNING

    @property
    def idle_summary(self) -> str:
        return f"no refused keys in the last {format_duration(self.window_s)}"

    def check(self, history: History) -> list[Finding]:
        findings = []
        for (tenant,) in history.label_sets("tenant.auth_failures"):
            num = history.increase(("tenant.auth_failures", tenant), self.window_s)
            if num == 0:
                continue
            who = "unrecognised keys" if tenant == UNKNOWN_TENANT else f"tenant {tenant}'s keys"
            summary = (f"{num:.0f} requests refused (401/403) for {who} in the last "
                       f"{format_duration(self.window_s)} (alert at {self.threshold})")
            findings.append(Finding((("tenant", tenant),), num >= self.threshold, summary))
        return findings


@dataclass(slots=True, frozen=True)
class DriftRule:
    """A tenant's collection whose queries or top retrieval scores moved away from their baseline
    (the drift statistics of quality_stats; /admin/stats "quality" has the numbers)."""

    name: str = "retrieval_drift"
    severity: str = WARNING
    idle_summary: str = "retrieval is back within its baseline"

    def check(self, history: History) -> list[Finding]:
        return [Finding((("collection", collection), ("tenant", tenant)), True,
                        f"tenant {tenant}, collection {collection}: retrieval has drifted from its baseline "
                        f"(see quality.drift in /admin/stats)")
                for tenant, collection in history.label_sets("retrieval.drifted")]


@dataclass(slots=True, frozen=True)
class CanaryRollbackRule:
    """A canary version the server rolled back on its own for breaking its objective; the reason is
    in the model events (/admin/models, the dashboard's Models screen)."""

    window_s: float
    name: str = "canary_rolled_back"
    severity: str = "ticket"
    idle_summary: str = ""

    def check(self, history: History) -> list[Finding]:
        findings = []
        for (version,) in history.label_sets("canary.auto_rollbacks"):
            num = history.increase(("canary.auto_rollbacks", version), self.window_s)
            summary = (f"canary {version} was rolled back automatically {num:.0f}x in the last "
                       f"{format_duration(self.window_s)}: it broke its objective (the reason: /admin/models "
                       "events, the dashboard's Models screen)")
            findings.append(Finding((("version", version),), num >= 1, summary))
        return findings


def rules_from_config(config: ServerConfig) -> list[Rule]:
    window = config.alert_window_s
    rules: list[Rule] = [BurnRateRule(o, w, config.slo_min_requests)
                         for o in objectives(config) for w in parse_windows(config.slo_burn_windows)]
    rules += [PreemptionRule(window, config.alert_preemptions_per_min),
              QueueRule(window, config.alert_queue_depth),
              TenantErrorRule(window, config.alert_tenant_error_ratio, config.alert_tenant_min_errors),
              AuthFailureRule(window, config.alert_auth_failures), DriftRule(), CanaryRollbackRule(window)]
    return rules
