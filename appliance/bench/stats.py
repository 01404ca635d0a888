"""Summary statistics shared by every benchmark and by the server's latency windows (/admin/stats),
so that a "p90" means the same thing in every report.

Percentiles are nearest-rank (the smallest observation with at least q of the sample at or below
it): always an observed value, never an interpolation between two requests.
"""

from __future__ import annotations

import math
import statistics

QUANTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}


def nearest_rank(ordered: list[float], q: float) -> float:
    """The q-quantile (0 < q <= 1) of an ascending, non-empty list."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def percentiles(values: list[float]) -> dict[str, float | None]:
    """{"mean", "p50", "p90", "p95", "p99"} of `values`; all None when there are none."""
    if not values:
        return {"mean": None} | dict.fromkeys(QUANTILES)
    ordered = sorted(values)
    return {"mean": statistics.fmean(ordered)} | {k: nearest_rank(ordered, q) for k, q in QUANTILES.items()}
