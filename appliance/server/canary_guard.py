"""Automatic rollback: a canary that breaks its objective over the window is rolled back.

Every `canary_check_interval_s` the guard reads the canary's window (appliance/server/version_stats):
once it holds `min_requests`, an error rate above `max_error_rate` or a p90 time to first token above
`max_ttft_p90_s` (0: not checked) rolls it back. The objective is the server's `canary_*` settings,
each of which a canary may override when it is set (POST /admin/models/{name}/canary). The reason
goes into the model events (who: the server), which /admin/models and the dashboard show.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from appliance.server.config import ServerConfig
from appliance.server.version_stats import WindowSummary

if TYPE_CHECKING:
    from appliance.server.state import AppState

log = logging.getLogger(__name__)


OBJECTIVE_FIELDS = ("window_s", "min_requests", "max_error_rate", "max_ttft_p90_s")


def objective(config: ServerConfig, overrides: dict) -> dict[str, float]:
    """The canary's objective: the server's canary_* settings, overridden per canary."""
    base = {name: float(getattr(config, f"canary_{name}")) for name in OBJECTIVE_FIELDS}
    return {**base, **{k: float(v) for k, v in overrides.items() if k in OBJECTIVE_FIELDS}}


def breach(goal: dict[str, float], window: WindowSummary) -> str | None:
    """Why the canary breaks its objective over this window, or None."""
    if window.num_requests < max(1, goal["min_requests"]):
        return None
    where = f"over the last {window.window_s:g} s ({window.num_requests} requests)"
    if window.error_rate > goal["max_error_rate"]:
        return f"error rate {window.error_rate:.2f} > {goal['max_error_rate']:g} {where}"
    limit = goal["max_ttft_p90_s"]
    if limit > 0 and window.ttft_p90_s is not None and window.ttft_p90_s > limit:
        return f"TTFT p90 {window.ttft_p90_s:.2f} s > {limit:g} s {where}"
    return None


async def guard_canary(state: AppState) -> None:
    """Runs for the server's lifetime (a background task)."""
    while True:
        await asyncio.sleep(state.config.canary_check_interval_s)
        fleet = state.fleet
        canary = fleet.canary_version() if fleet is not None else None
        if canary is None:
            continue
        goal = objective(state.config, canary.objective)
        reason = breach(goal, state.version_metrics.summary(canary.name, goal["window_s"]))
        if reason is not None and fleet.canary_version() is canary:
            log.warning("canary %s rolled back: %s", canary.name, reason)
            try:
                await fleet.rollback(None, reason, action="auto_rollback")
            except Exception:  # the guard must outlive one failed move (it retries next interval)
                log.exception("automatic rollback of %s failed", canary.name)
