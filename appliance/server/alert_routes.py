"""GET /admin/alerts and the task that evaluates the alert rules every `alert_interval_s`.

The task lives as long as the app (a cleanup context: started with it, cancelled with it) and never
stops on an error: a failing evaluation is logged and the next one comes at the next interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from appliance.server.signals import collect
from appliance.server.state import STATE, AppState, state_of

log = logging.getLogger(__name__)


async def evaluate_forever(state: AppState) -> None:
    while True:
        await asyncio.sleep(state.config.alert_interval_s)
        try:
            stats = await state.engine.get_stats() if state.engine is not None else None
            state.alerts.observe(collect(state, stats, time.monotonic()))
        except Exception:  # an alerting bug must not stop the alerts for good
            log.exception("alert evaluation failed")


async def alerting(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: evaluate the rules while the app runs."""
    task = asyncio.create_task(evaluate_forever(app[STATE]))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def list_alerts(request: web.Request) -> web.Response:
    return web.json_response({"alerts": state_of(request).alerts.snapshot()})
