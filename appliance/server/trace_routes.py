"""`GET /admin/traces`: the request traces the server holds, newest or slowest first (see tracing);
`POST /admin/tracing`: switch tracing on or off without a restart."""

from __future__ import annotations

from aiohttp import web

from appliance.server.errors import bad_request
from appliance.server.params import read_json
from appliance.server.state import state_of
from appliance.server.trace_sink import ORDERS, RING_SIZE

DEFAULT_LIMIT = 50


async def traces(request: web.Request) -> web.Response:
    tracing = state_of(request).tracing
    try:
        limit = min(RING_SIZE, max(1, int(request.query.get("limit", str(DEFAULT_LIMIT)))))
    except ValueError:
        raise bad_request("'limit' must be an integer", "limit", "invalid_type") from None
    order = request.query.get("order", "recent")
    if order not in ORDERS:
        raise bad_request(f"'order' must be one of {', '.join(ORDERS)}", "order", "invalid_value")
    return web.json_response({"enabled": tracing.enabled, "order": order,
                              "traces": tracing.traces(limit, order)})


async def set_tracing(request: web.Request) -> web.Response:
    """Switch request tracing on or off at run time (the traces held so far stay readable)."""
    state = state_of(request)
    body = await read_json(request, state.config.max_body_bytes)
    if not body.has("enabled"):
        raise bad_request("'enabled' is required (true or false)", "enabled", "missing_required_parameter")
    state.tracing.set_enabled(body.boolean("enabled", True))
    return web.json_response({"enabled": state.tracing.enabled})
