"""What the alert rules read: samples of the server's cumulative counters, kept over time.

Each evaluation samples the counters /metrics exports (request outcomes, the TTFT and queue-wait
histograms at their SLO thresholds, preemptions, the queue, per-tenant answers, the (tenant,
collection) scopes whose retrieval drifted, see quality_stats) and adds the sample
to a history; a rule then asks what Prometheus's `increase(x[window])` would: the latest value minus
the value at the start of the window. The process starts with every counter at zero, so a history
begins with an empty sample at start-up and a window longer than the uptime counts from there.
Samples are kept at a resolution of a twentieth of the shortest window, for as long as the longest.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.server.state import AppState
    from engine import EngineStats

SLO_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/rag/query", "/v1/rag/retrieve"})
AUTH_FAILURES = frozenset({"401", "403"})
NOT_COUNTED = "499"  # the client left: neither a success nor the server's failure
UNKNOWN_TENANT = "(unknown)"  # requests whose key was not recognised
Key = str | tuple[str, ...]  # a series: a name, or (name, *labels) such as (name, tenant)


@dataclass(slots=True, frozen=True)
class Sample:
    at: float  # time.monotonic()
    values: dict[Key, float] = field(default_factory=dict)

    def get(self, key: Key) -> float:
        return self.values.get(key, 0.0)


class History:
    def __init__(self, start: float, max_age_s: float, resolution_s: float) -> None:
        self.max_age_s = max_age_s
        self.resolution_s = resolution_s
        self.samples: list[Sample] = [Sample(start)]  # oldest first
        self.latest = self.samples[0]

    def add(self, sample: Sample) -> None:
        self.latest = sample
        if sample.at - self.samples[-1].at >= self.resolution_s:
            self.samples.append(sample)
        # Keep one sample at least max_age_s old: the base of the longest window.
        num_stale = bisect.bisect_right(self.samples, sample.at - self.max_age_s, key=lambda s: s.at) - 1
        if num_stale > 0 and num_stale >= len(self.samples) // 2:  # in bulk: amortised O(1) a sample
            del self.samples[:num_stale]

    def at_start_of(self, window_s: float) -> Sample:
        """The newest sample taken at least window_s before the latest (else the oldest one)."""
        index = bisect.bisect_right(self.samples, self.latest.at - window_s, key=lambda s: s.at) - 1
        return self.samples[max(index, 0)]

    def increase(self, key: Key, window_s: float) -> float:
        """How much a counter grew over the window (0 if it went down: the counter was reset)."""
        return max(0.0, self.latest.get(key) - self.at_start_of(window_s).get(key))

    def value(self, key: Key) -> float:
        return self.latest.get(key)

    def value_before(self, key: Key, window_s: float) -> float:
        return self.at_start_of(window_s).get(key)

    def label_sets(self, name: str) -> list[tuple[str, ...]]:
        """The labels of every `name` series in the latest sample: [(tenant,), ...]."""
        return sorted(k[1:] for k in self.latest.values if isinstance(k, tuple) and k[0] == name)


def collect(state: AppState, stats: EngineStats | None, now: float) -> Sample:
    """One sample of every series the rules read (see the module docstring)."""
    metrics, config = state.metrics, state.config
    values: dict[Key, float] = {"queue_depth": float(state.admission.num_queued)}
    if stats is not None:
        values["preemptions"] = float(stats.num_preemptions)
    with metrics.lock:
        for name, histogram, bound in (("ttft", metrics.ttft, config.slo_ttft_s),
                                       ("queue_wait", metrics.queue, config.slo_queue_wait_s)):
            values[f"{name}.total"] = float(histogram.num)
            values[f"{name}.bad"] = float(histogram.num - histogram.num_at_most(bound))
        http = list(metrics.http_requests.values.items())
        by_tenant = list(metrics.tenant_requests.values.items())
    total = bad = 0.0
    for labels, count in http:
        route, status = dict(labels)["route"], dict(labels)["status"]
        if route in SLO_ROUTES and not status.startswith("4"):  # client errors and 499: not counted
            total += count
            bad += count if status.startswith("5") else 0.0
    values["availability.total"], values["availability.bad"] = total, bad
    for labels, count in by_tenant:
        _add_tenant_outcome(values, dict(labels)["tenant"], dict(labels)["status"], count)
    for tenant, collection in metrics.quality.drifted_scopes():
        values[("retrieval.drifted", tenant, collection)] = 1.0
    if state.fleet is not None:
        for version, count in state.fleet.auto_rollbacks.items():
            values[("canary.auto_rollbacks", version)] = float(count)
    return Sample(now, values)


def _add_tenant_outcome(values: dict[Key, float], tenant: str, status: str, count: float) -> None:
    """A tenant's answers: auth failures apart; errors are the other 4xx and 5xx."""
    if status == NOT_COUNTED:
        return
    if status in AUTH_FAILURES:
        _add(values, ("tenant.auth_failures", tenant), count)
        return
    _add(values, ("tenant.requests", tenant), count)
    if status[0] in "45":
        _add(values, ("tenant.errors", tenant), count)
    else:
        _add(values, ("tenant.errors", tenant), 0.0)


def _add(values: dict[Key, float], key: Key, count: float) -> None:
    values[key] = values.get(key, 0.0) + count
