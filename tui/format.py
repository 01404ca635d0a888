"""Number formatting shared by the panels: short, fixed-width friendly, and never a clock."""

from __future__ import annotations

DASH = "–"


def count(value: int | float) -> str:
    """1234 -> '1,234'; past 99,999 compact: 432k, 1.3M, 12M (three significant digits at most)."""
    value = float(value)
    if abs(value) < 100_000:
        return f"{round(value):,}"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            scaled = value / size
            return f"{scaled:.1f}{unit}" if abs(scaled) < 10 else f"{scaled:.0f}{unit}"
    return f"{value:.0f}"


def rate(value: float) -> str:
    return f"{value:,.1f}"


def percent(fraction: float | None, digits: int = 1) -> str:
    return DASH if fraction is None else f"{fraction * 100:.{digits}f}%"


def money(value: float | None) -> str:
    """Costs in at most five cells: '0.42', '43.6', '1,234', '12k'; a dash for None."""
    if value is None:
        return DASH
    if abs(value) < 10:
        return f"{value:.2f}"
    return f"{value:.1f}" if abs(value) < 100 else count(value)


def seconds(value: float | None) -> str:
    """Latencies: '850 ms' below a second, '1.25 s' above."""
    if value is None:
        return DASH
    if value < 1.0:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def duration(value_s: float) -> str:
    """Uptime: '45s', '12m05s', '3h07m', '2d04h'."""
    total = int(value_s)
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
