"""Routing one request to a model version, and tokenizing its prompt with that version's tokenizer.

Rules may look at the prompt's length, which needs tokens before the version is known: the prompt is
then counted with the live version's tokenizer, and tokenized again only when the chosen version was
loaded from another checkpoint (versions of one checkpoint, e.g. int4 and bf16, tokenize alike).
The chosen version is held from here until the request ends (metering releases it), so a version
being retired is not unloaded under a request that is still tokenizing or streaming.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web

from appliance.server.errors import ApiError
from appliance.server.fleet import Resident
from appliance.server.model_routing import RouteRequest
from appliance.server.params import Body
from appliance.server.state import AppState, RequestContext

if TYPE_CHECKING:
    from engine import AsyncEngine

T = TypeVar("T")
SESSION_HEADER = "X-Session-Id"
VERSION_HEADER = "X-Model-Version"


def requested_version(body: Body, state: AppState) -> str | None:
    """None for the served model name (routed), else the version the body's `model` names (or 404)."""
    model = body.string("model", max_len=512)
    fleet = state.need_fleet()
    if model == fleet.alias:
        return None
    if model in fleet.versions:
        return model
    raise ApiError(404, f"The model '{model}' does not exist; this server serves '{fleet.alias}' and its "
                   "versions (GET /v1/models)", "model", "model_not_found")


def session_key(request: web.Request, body: Body) -> str:
    """What keeps a conversation on one version: X-Session-Id, else OpenAI's `user`, else the tenant."""
    header = request.headers.get(SESSION_HEADER, "")[:256]
    user = body.raw("user")
    return header or (user[:256] if isinstance(user, str) else "")


async def pick(state: AppState, ctx: RequestContext, request: web.Request, body: Body, requested: str | None,
               tokenize: Callable[[AsyncEngine], T], *, kind: str,
               measure: Callable[[T], int] = len) -> tuple[Resident, T]:
    """The version for this request (held until it ends) and its prompt tokenized for it."""
    fleet = state.need_fleet()
    live = fleet.live
    assert live is not None and ctx.principal is not None
    tokens: T | None = None
    num_tokens = 0
    if requested is None and fleet.needs_prompt_length():
        tokens = await asyncio.to_thread(tokenize, live.engine)
        num_tokens = measure(tokens)
    req = RouteRequest(ctx.principal.tenant, session_key(request, body), kind, num_tokens)
    resident, route = fleet.route(req, requested)
    fleet.acquire(resident)
    ctx.version = resident
    state.version_metrics.routed(resident.name, route.reason)
    if tokens is None or resident.tokenizer_key != live.tokenizer_key:
        tokens = await asyncio.to_thread(tokenize, resident.engine)
    return resident, tokens
