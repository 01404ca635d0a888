"""TTFT and time-per-output-token percentiles over the last minute, from the /metrics histograms.

The server's histograms are cumulative since it started; like Prometheus' `histogram_quantile(q,
rate(h[1m]))`, the dashboard keeps the bucket counts it scraped and takes quantiles of the
difference between the newest scrape and the one about a minute older, interpolating linearly
inside the bucket that holds the rank. So "p95" means the p95 of the requests that finished in
the last minute, at the histogram's bucket resolution.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass

TTFT = "appliance:time_to_first_token_seconds"
TPOT = "appliance:time_per_output_token_seconds"
WINDOW_S = 60.0
_BUCKET = re.compile(r'^(?P<name>[^\s{]+)_bucket\{[^}]*le="(?P<le>[^"]+)"[^}]*\}\s+(?P<value>\S+)')


@dataclass(slots=True, frozen=True)
class Histogram:
    """Upper bounds (the last is +Inf) and the cumulative counts at each bound."""

    bounds: tuple[float, ...]
    counts: tuple[float, ...]

    @property
    def num_samples(self) -> float:
        return self.counts[-1] if self.counts else 0.0

    def minus(self, older: Histogram) -> Histogram | None:
        """The observations between two scrapes; None when the buckets changed or counters reset."""
        if older.bounds != self.bounds:
            return None
        counts = tuple(a - b for a, b in zip(self.counts, older.counts, strict=True))
        if any(c < 0 for c in counts):
            return None
        return Histogram(self.bounds, counts)

    def quantile(self, q: float) -> float | None:
        total = self.num_samples
        if total <= 0:
            return None
        rank = q * total
        lower, below = 0.0, 0.0
        for bound, cumulative in zip(self.bounds, self.counts, strict=True):
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower  # past the last finite bucket: its bound is all that is known
                in_bucket = cumulative - below
                fraction = (rank - below) / in_bucket if in_bucket > 0 else 1.0
                return lower + (bound - lower) * fraction
            lower, below = bound, cumulative
        return lower


@dataclass(slots=True, frozen=True)
class Quantiles:
    p50: float | None
    p95: float | None
    num_samples: int


EMPTY = Quantiles(None, None, 0)


def parse_histograms(text: str, names: tuple[str, ...] = (TTFT, TPOT)) -> dict[str, Histogram]:
    """The `_bucket` series of the named histograms in a Prometheus text exposition."""
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for line in text.splitlines():
        match = _BUCKET.match(line)
        if match and match["name"] in found:
            found[match["name"]].append((float(match["le"]), float(match["value"])))
    result = {}
    for name, points in found.items():
        if points:
            points.sort()
            result[name] = Histogram(tuple(b for b, _ in points), tuple(c for _, c in points))
    return result


class LatencyWindow:
    """Scrapes of the histograms over the last `window_s`, and the quantiles of what they saw."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._scrapes: deque[tuple[float, dict[str, Histogram]]] = deque()

    def add(self, now: float, histograms: dict[str, Histogram]) -> None:
        self._scrapes.append((now, histograms))
        # Keep one scrape at least window_s old as the baseline; drop the ones before it.
        while len(self._scrapes) > 2 and now - self._scrapes[1][0] >= self.window_s:
            self._scrapes.popleft()

    def quantiles(self, name: str) -> Quantiles:
        if len(self._scrapes) < 2:
            return EMPTY
        old, new = self._scrapes[0][1].get(name), self._scrapes[-1][1].get(name)
        if old is None or new is None:
            return EMPTY
        recent = new.minus(old)
        if recent is None:  # the server restarted: start the window again from this scrape
            self._scrapes = deque([self._scrapes[-1]])
            return EMPTY
        return Quantiles(recent.quantile(0.50), recent.quantile(0.95), int(recent.num_samples))
