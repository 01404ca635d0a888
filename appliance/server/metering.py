"""The outermost middleware: whom each request was for, how it ended, and what its inference cost.

It wraps the gateway, so it sees the status the client got (the gateway has turned errors into
responses by then; a client that left counts as 499) and the request's context as the gateway
filled it: the tenant (none when the key was not recognised) and, for inference, the tokens used.
Every answer is counted per tenant and status (the per-tenant error and auth-failure alerts read
these counts); an inference request that reached the engine is charged to its tenant (see cost).
"""

from __future__ import annotations

from aiohttp import web

from appliance.server.cost import Usage
from appliance.server.gateway import PUBLIC_PATHS, STATUS_CLIENT_CLOSED
from appliance.server.signals import UNKNOWN_TENANT
from appliance.server.state import CTX, AppState, RequestContext, state_of

INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/rag/query"})


@web.middleware
async def metering(request: web.Request, handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    state = state_of(request)
    charged = request.method == "POST" and request.path in INFERENCE_PATHS
    mark = state.cost.clock.begin() if charged else 0.0
    status = STATUS_CLIENT_CLOSED
    try:
        response = await handler(request)
        ctx = request.get(CTX)
        status = STATUS_CLIENT_CLOSED if ctx is not None and ctx.client_gone else response.status
        return response
    finally:
        engine_seconds = state.cost.clock.end(mark) if charged else 0.0
        _record(state, request.get(CTX), status, engine_seconds)


def _record(state: AppState, ctx: RequestContext | None, status: int, engine_seconds: float) -> None:
    tenant = (ctx.tenant if ctx is not None else None) or UNKNOWN_TENANT
    with state.metrics.lock:
        state.metrics.tenant_requests.inc(tenant=tenant, status=str(status))
    if ctx is not None and ctx.version is not None:  # routed to a model version: it is free to go now
        outcome = ctx.stream_error_status or status
        state.version_metrics.finished(ctx.version.name, outcome, ctx.ttft_s, ctx.tpot_s)
        if state.fleet is not None:
            state.fleet.release(ctx.version)
    if ctx is not None and ctx.counts_usage:
        usage = Usage(max(0, ctx.prompt_tokens - ctx.cached_tokens), ctx.cached_tokens, ctx.completion_tokens,
                      engine_seconds)
        state.cost.record(tenant, usage)
