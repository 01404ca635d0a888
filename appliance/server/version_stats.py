"""Per model version: requests, errors, TTFT, TPOT and answer-quality signals, side by side.

Totals count since the version was loaded; the window (the canary SLO window) gives recent error
rates and latency percentiles, which the canary guard compares against the configured objective and
the dashboard shows for live and canary together. Observations come from the event loop; /metrics
may render from a worker thread, hence the lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from appliance.bench.stats import nearest_rank
from appliance.server.quality_stats import AnswerTally, MetricFamily
from rag.quality import AnswerQuality

MAX_SAMPLES = 8192


@dataclass(slots=True, frozen=True)
class Sample:
    at: float  # monotonic seconds
    ok: bool  # not a server-side failure (5xx)
    ttft_s: float | None
    tpot_s: float | None


@dataclass(slots=True)
class WindowSummary:
    window_s: float
    num_requests: int
    num_errors: int
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    tpot_p50_s: float | None

    @property
    def error_rate(self) -> float:
        return self.num_errors / self.num_requests if self.num_requests else 0.0

    def to_dict(self) -> dict:
        return {"window_s": self.window_s, "requests": self.num_requests, "errors": self.num_errors,
                "error_rate": round(self.error_rate, 4), "ttft_p50_s": self.ttft_p50_s,
                "ttft_p90_s": self.ttft_p90_s, "tpot_p50_s": self.tpot_p50_s}


@dataclass(slots=True)
class VersionStats:
    num_requests: int = 0
    num_errors: int = 0
    routes: dict[str, int] = field(default_factory=dict)  # why requests came here ("live", "rule:x", ...)
    answers: AnswerTally = field(default_factory=AnswerTally)
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))

    def window(self, window_s: float, now: float) -> WindowSummary:
        recent = [s for s in self.samples if now - s.at <= window_s]
        ttfts = sorted(s.ttft_s for s in recent if s.ttft_s is not None)
        tpots = sorted(s.tpot_s for s in recent if s.tpot_s is not None)
        return WindowSummary(window_s, len(recent), sum(not s.ok for s in recent),
                             nearest_rank(ttfts, 0.5) if ttfts else None,
                             nearest_rank(ttfts, 0.9) if ttfts else None,
                             nearest_rank(tpots, 0.5) if tpots else None)


class VersionMetrics:
    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.lock = threading.Lock()
        self.versions: dict[str, VersionStats] = {}

    def _get(self, version: str) -> VersionStats:
        return self.versions.setdefault(version, VersionStats())

    def reset(self, version: str) -> None:
        """A version added again under an old name starts with no history."""
        with self.lock:
            self.versions.pop(version, None)

    def routed(self, version: str, reason: str) -> None:
        with self.lock:
            routes = self._get(version).routes
            routes[reason] = routes.get(reason, 0) + 1

    def finished(self, version: str, status: int, ttft_s: float | None, tpot_s: float | None,
                 now: float | None = None) -> None:
        """A request routed to `version` ended with HTTP `status` (499: the client left)."""
        ok = status < 500
        with self.lock:
            stats = self._get(version)
            stats.num_requests += 1
            stats.num_errors += not ok
            stats.samples.append(Sample(now if now is not None else time.monotonic(), ok, ttft_s, tpot_s))

    def answered(self, version: str, quality: AnswerQuality) -> None:
        with self.lock:
            self._get(version).answers.add(quality)

    def summary(self, version: str, window_s: float | None = None, now: float | None = None) -> WindowSummary:
        with self.lock:
            return self._get(version).window(window_s or self.window_s,
                                             now if now is not None else time.monotonic())

    def snapshot(self, version: str) -> dict:
        summary = self.summary(version)
        with self.lock:
            stats = self._get(version)
            return {"requests_total": stats.num_requests, "errors_total": stats.num_errors,
                    "routes": dict(stats.routes), "answers": stats.answers.to_dict(),
                    "window": summary.to_dict()}

    def metric_families(self) -> list[MetricFamily]:
        now = time.monotonic()
        with self.lock:
            items = sorted(self.versions.items())
            windows = {name: stats.window(self.window_s, now) for name, stats in items}
            requests = [("", {"version": n, "outcome": outcome}, value) for n, s in items
                        for outcome, value in (("ok", s.num_requests - s.num_errors),
                                               ("error", s.num_errors))]
            routes = [("", {"version": n, "reason": r}, c) for n, s in items
                      for r, c in sorted(s.routes.items())]
        families = [
            MetricFamily("model_version_requests_total", "counter",
                         "Requests served by each model version, by outcome (error: 5xx).", requests),
            MetricFamily("model_version_routed_total", "counter",
                         "Requests routed to each model version, by why (live, canary, model, rule:NAME).",
                         routes),
        ]
        for key, help_ in (("ttft_p50_s", "Median time to first token"),
                           ("ttft_p90_s", "p90 time to first token"),
                           ("tpot_p50_s", "Median time per output token")):
            samples = [("", {"version": n}, getattr(w, key)) for n, w in windows.items()
                       if getattr(w, key) is not None]
            families.append(MetricFamily(f"model_version_{key[:-2]}_seconds", "gauge",
                                         f"{help_} of each model version over the last "
                                         f"{self.window_s:g} s.", samples))
        families.append(MetricFamily("model_version_error_rate", "gauge",
                                     f"Share of each model version's requests that failed (5xx) over the "
                                     f"last {self.window_s:g} s.",
                                     [("", {"version": n}, w.error_rate) for n, w in windows.items()]))
        return families
