"""The one middleware every request passes: request id, trace, authentication, roles, limits, errors,
audit.

Probes (/health, /metrics, /openapi.json) are public and not audited; every other request is
authenticated with `Authorization: Bearer <key>` and written to the audit log when it ends, however
it ends (success, error, client disconnect, cancellation). SQLite stays off the event loop: the key
lookup runs in a worker thread and the audit row goes to the writer thread; an admin request first
waits (bounded) until every row handed over before it is written, so admin reads see them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import web

from appliance.server.errors import ApiError
from appliance.server.state import CTX, AppState, RequestContext, ctx_of, state_of
from appliance.server.store import AuditEntry

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/", "/health", "/metrics", "/openapi.json"})
STATUS_CLIENT_CLOSED = 499  # nginx's convention for "the client went away first"
ADMIN_FLUSH_TIMEOUT_S = 5.0


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(unmatched)"


async def _authenticate(state: AppState, request: web.Request, ctx: RequestContext) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", None, "invalid_api_key",
                       {"WWW-Authenticate": "Bearer"})
    identity = await state.control.identify(key.strip())
    if identity is None:
        raise ApiError(401, "invalid or revoked API key", None, "invalid_api_key",
                       {"WWW-Authenticate": "Bearer"})
    principal = ctx.principal = identity.principal
    ctx.tenant_row = identity.tenant
    if request.path.startswith("/admin"):
        if not principal.is_admin:
            raise ApiError(403, "this endpoint needs an admin key", None, "admin_required")
        await state.control.flush(ADMIN_FLUSH_TIMEOUT_S)
        return
    state.admission.check_draining()
    if not principal.is_admin:
        state.limits.check(identity.tenant, state.admission.tenant_tokens(principal.tenant))


def _http_error(exc: web.HTTPException) -> ApiError:
    if exc.status == 413:
        return ApiError(413, "request body is too large", None, "payload_too_large")
    if exc.status == 404:
        return ApiError(404, f"no such endpoint: {exc.reason}", None, "unknown_url")
    if exc.status == 405:
        return ApiError(405, "method not allowed for this endpoint", None, "method_not_allowed",
                        {"Allow": exc.headers.get("Allow", "")})
    return ApiError(exc.status, exc.reason or "request failed", None, None)


@web.middleware
async def gateway(request: web.Request, handler) -> web.StreamResponse:
    state = state_of(request)
    if request.path in PUBLIC_PATHS:
        return await _handle(request, handler, RequestContext())
    ctx = RequestContext()
    ctx.trace = state.tracing.start(request.method, _route_name(request), request.path, ctx.request_id)
    state.admission.enter()
    status, streamed = 500, False
    try:
        with ctx.trace.current():
            response = await _handle(request, handler, ctx, authenticate=True)
        status = STATUS_CLIENT_CLOSED if ctx.client_gone else response.status
        streamed = response.prepared  # an SSE response is written by the handler; JSON after it
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        status = STATUS_CLIENT_CLOSED
        raise
    finally:
        state.admission.exit()
        ctx.trace.end(status, ctx.tenant, ctx.error_code, streamed)
        await _audit(state, request, ctx, status)


async def _handle(request: web.Request, handler, ctx: RequestContext,
                  authenticate: bool = False) -> web.StreamResponse:
    request[CTX] = ctx
    try:
        route_error = request.match_info.http_exception
        if route_error is not None:
            raise _http_error(route_error)
        if authenticate:
            with ctx.trace.stage("auth"):
                await _authenticate(state_of(request), request, ctx)
        response = await handler(request)
    except ApiError as err:
        ctx.error_code = err.code or err.type
        if err.status in (429, 503):
            state_of(request).metrics.rejections.inc(reason=ctx.error_code)
        response = err.response()
    except web.HTTPException as exc:
        err = _http_error(exc)
        ctx.error_code = err.code
        response = err.response()
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        ctx.error_code = "internal_error"
        response = ApiError(500, "internal server error", None, "internal_error").response()
    if not response.prepared:
        response.headers["x-request-id"] = ctx.request_id
        response.headers.update(ctx.trace.headers())
        response.headers.update(ctx.version_headers())
    return response


async def _audit(state: AppState, request: web.Request, ctx: RequestContext, status: int) -> None:
    route = _route_name(request)
    state.metrics.http_requests.inc(route=route, status=str(status))
    entry = AuditEntry(ctx.tenant, ctx.principal.key_id if ctx.principal else None, request.method, route,
                       status, ctx.request_id, (time.monotonic() - ctx.started) * 1000.0, ctx.prompt_tokens,
                       ctx.cached_tokens, ctx.completion_tokens, ctx.error_code, ctx.prompt,
                       detail=json.dumps(ctx.audit_detail, sort_keys=True) if ctx.audit_detail else None,
                       trace_id=ctx.trace.trace_id,
                       model_version=ctx.version.name if ctx.version is not None else None)
    try:
        await state.control.record(entry, ctx.counts_usage)
    except Exception:  # the audit must never turn a served request into an error
        log.exception("could not hand over the audit row for %s", ctx.request_id)


def request_id_of(request: web.Request) -> str:
    return ctx_of(request).request_id
