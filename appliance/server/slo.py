"""Service-level objectives and how fast they burn their error budget (the SRE workbook's alerting).

An objective names which requests are good and the share of them that must be: time to first token
at most a threshold for 95% of requests, queue wait likewise, no 5xx answer for 99%. The error budget
is the share allowed to be bad (1 - target). The burn rate over a window is the bad share in that
window over the budget: at 1 the budget lasts exactly the SLO period; at 14.4 a 30-day budget loses
2% in one hour. A burn-rate alert needs two windows over the rate: the long one (1h) makes it
significant, the short one (5m) lets it clear soon after the burning stops.

Good and bad requests are read from the cumulative counters /metrics exports (a latency threshold is
therefore a histogram bucket bound), so the Prometheus rules in deploy/ compute the same numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.server.metrics import LATENCY_BUCKETS

if TYPE_CHECKING:
    from appliance.server.config import ServerConfig

SEVERITIES = ("page", "ticket")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


class SloError(ValueError):
    """An objective or burn window that cannot be used; the message names it."""


@dataclass(slots=True, frozen=True)
class BurnWindow:
    short_s: float
    long_s: float
    burn_rate: float  # alert when both windows burn at least this fast
    severity: str
    label: str  # as configured, e.g. "5m/1h"


@dataclass(slots=True, frozen=True)
class Objective:
    name: str  # ttft, queue_wait, availability: the alert is f"{name}_burn_rate"
    target: float  # share of requests that must be good
    description: str  # what a good request is, for the alert's summary
    # The history series (see signals.collect) counting the requests and the bad ones among them.
    total_series: str
    bad_series: str

    @property
    def budget(self) -> float:
        return 1.0 - self.target


def burn_rate(num_bad: float, num_total: float, target: float) -> float:
    """The bad share over the error budget; 0 with no requests (nothing was burnt)."""
    if num_total <= 0:
        return 0.0
    return (num_bad / num_total) / (1.0 - target)


def parse_duration(text: str) -> float:
    """'30s', '5m', '1h', '3d' (also fractional: '0.5s') in seconds."""
    match = _DURATION_RE.match(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise SloError(f"cannot read {text!r} as a duration like 30s, 5m, 1h or 3d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration: 300 -> '5m', 3600 -> '1h', 2.5 -> '2.5s'."""
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{seconds / _UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"


def parse_windows(spec: str) -> tuple[BurnWindow, ...]:
    """'5m/1h:14.4:page,30m/6h:6:page' -> burn windows (short/long:burn rate:severity)."""
    return tuple(_parse_window(part.strip()) for part in spec.split(","))


def _parse_window(part: str) -> BurnWindow:
    fields = part.split(":")
    if len(fields) != 3 or fields[0].count("/") != 1:
        raise SloError(f"slo_burn_windows: cannot read {part!r}; write short/long:burn rate:severity, "
                       "e.g. 5m/1h:14.4:page")
    short_text, long_text = fields[0].split("/")
    short_s, long_s = parse_duration(short_text), parse_duration(long_text)
    if short_s >= long_s:
        raise SloError(f"slo_burn_windows: in {part!r} the short window must be shorter than the long one")
    try:
        rate = float(fields[1])
    except ValueError:
        raise SloError(f"slo_burn_windows: {fields[1]!r} in {part!r} is not a burn rate") from None
    if not rate > 0:
        raise SloError(f"slo_burn_windows: the burn rate in {part!r} must be positive")
    if fields[2] not in SEVERITIES:
        raise SloError(f"slo_burn_windows: severity {fields[2]!r} in {part!r} is not one of "
                       f"{', '.join(SEVERITIES)}")
    return BurnWindow(short_s, long_s, rate, fields[2], fields[0])


def objectives(config: ServerConfig) -> tuple[Objective, ...]:
    return (
        Objective("ttft", config.slo_ttft_target, f"time to first token ≤ {config.slo_ttft_s:g} s",
                  "ttft.total", "ttft.bad"),
        Objective("queue_wait", config.slo_queue_wait_target, f"queue wait ≤ {config.slo_queue_wait_s:g} s",
                  "queue_wait.total", "queue_wait.bad"),
        Objective("availability", config.slo_availability_target, "no 5xx answer",
                  "availability.total", "availability.bad"),
    )


def check_slo_settings(config: ServerConfig) -> None:
    """Raise SloError for a target outside (0, 1), a threshold off the buckets, or a bad window spec."""
    for name in ("slo_ttft_target", "slo_queue_wait_target", "slo_availability_target"):
        if not 0 < getattr(config, name) < 1:
            raise SloError(f"{name} must be between 0 and 1 (e.g. 0.95), got {getattr(config, name)}")
    for name in ("slo_ttft_s", "slo_queue_wait_s"):
        if getattr(config, name) not in LATENCY_BUCKETS:
            bounds = ", ".join(f"{b:g}" for b in LATENCY_BUCKETS)
            raise SloError(f"{name} must be a latency histogram bucket bound (one of {bounds}), "
                           f"got {getattr(config, name)}")
    parse_windows(config.slo_burn_windows)
