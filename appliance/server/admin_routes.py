"""Admin-key endpoints: the /admin/stats snapshot, tenants, keys, cache flush, admission pause/resume."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from appliance.server.errors import ApiError, not_found
from appliance.server.model_routes import models_overview
from appliance.server.params import read_json
from appliance.server.state import AppState, ctx_of, principal_of, state_of
from appliance.server.store import ROLES, StoreError, UnknownTenantError
from appliance.server.tenant_erase import erase_tenant
from appliance.server.tenant_fields import FIELDS, LIMIT_FIELDS
from engine import InvalidRequestError


async def stats(request: web.Request) -> web.Response:
    state = state_of(request)
    engine = state.need_engine()
    engine_stats = await engine.get_stats()
    state.metrics.rates.sample(engine_stats.prompt_tokens_total, engine_stats.generation_tokens_total)
    footprint = await asyncio.to_thread(engine.kv_footprint)
    usage = await asyncio.to_thread(state.store.usage_by_tenant)
    return web.json_response(build_stats(state, engine_stats, usage, footprint))


def build_stats(state: AppState, s, usage: dict, fp) -> dict:
    """The /admin/stats document (its shape is a contract; see docs/api.md); fp: the KV footprint."""
    return {
        "model": state.model_name,
        "status": server_status(state),
        "uptime_s": round(time.time() - state.started_at, 3),
        "kv": {"block_size": s.block_size, "num_blocks": s.num_blocks, "used_blocks": s.used_blocks,
               "cached_blocks": s.cached_blocks, "free_blocks": s.free_blocks, "usage_perc": s.usage_perc,
               "shared_blocks": s.shared_blocks, "pinned_blocks": s.pinned_blocks,
               "evictions_total": s.num_evictions,
               "allocated_slots": fp.allocated_slots, "unfilled_slots": fp.unfilled_slots,
               "waste_perc": fp.waste_perc, "kv_bytes": fp.kv_bytes, "weight_bytes": fp.weight_bytes,
               "memory_share": fp.memory_share},
        "prefix_cache": {"query_tokens": s.prefix_query_tokens, "hit_tokens": s.prefix_hit_tokens,
                         "hit_rate": s.hit_rate},
        "chunk_cache": {"hit_tokens": s.chunk_hit_tokens, "recomputed_tokens": s.chunk_recomputed_tokens,
                        "query_tokens": s.chunk_query_tokens, "prefix_hit_tokens": s.chunk_prefix_hit_tokens,
                        "served_perc": round(s.chunk_served_perc, 4), "blocks": s.chunk_blocks},
        "requests": {"running": s.num_running, "waiting": s.num_waiting,
                     "preemptions_total": s.num_preemptions, "finished": s.requests_finished},
        "throughput": state.metrics.rates.rates(),
        "latency": state.metrics.latency_summary(),
        "totals": {"prompt_tokens_computed": s.prompt_tokens_total,
                   "generation_tokens": s.generation_tokens_total, "engine_steps": s.num_steps},
        "tenants": usage,
        "admission": state.admission.snapshot(),
        "cost": state.cost.snapshot(),
        "quality": state.metrics.quality.snapshot(),
        "models": models_overview(state),
    }


def server_status(state: AppState) -> str:
    if state.admission.is_draining:
        return "draining"
    if not state.is_loaded:
        return "loading"
    if state.engine is not None and not state.engine.health().ok:
        return "engine_faulted"  # faults keep repeating (or the step loop is gone): /health is 503
    return "paused" if state.admission.is_paused else "ready"


async def list_tenants(request: web.Request) -> web.Response:
    tenants = await asyncio.to_thread(state_of(request).store.list_tenants)
    return web.json_response({"tenants": [t.to_dict() for t in tenants]})


async def create_tenant(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json(request, state.config.max_body_bytes)
    name = body.string("name", max_len=64)
    quota = body.integer("token_quota_per_day", state.config.default_token_quota_per_day, minimum=0)
    rpm = body.integer("requests_per_minute", state.config.default_requests_per_minute, minimum=0)
    extra = {k: v for k, v in _tenant_fields(body, known_only=False).items() if v is not None}
    extra.pop("token_quota_per_day", None)
    extra.pop("requests_per_minute", None)
    try:
        tenant = await asyncio.to_thread(state.store.create_tenant, name, quota, rpm, **extra)
    except StoreError as exc:
        exists = "already exists" in str(exc)
        raise ApiError(409 if exists else 400, str(exc), exc.param or "name",
                       "tenant_exists" if exists else "invalid_value") from None
    return web.json_response(tenant.to_dict(), status=201)


async def update_tenant(request: web.Request) -> web.Response:
    """PATCH /admin/tenants/{name}: set limits and weight; a null value goes back to the default."""
    state = state_of(request)
    body = await read_json(request, state.config.max_body_bytes)
    fields = _tenant_fields(body, known_only=True)
    if not fields:
        raise ApiError(400, f"send at least one of: {', '.join(FIELDS)}", None, "missing_required_parameter")
    try:
        tenant = await asyncio.to_thread(state.store.update_tenant, request.match_info["name"], **fields)
    except StoreError as exc:
        raise _store_error(exc) from None
    return web.json_response(tenant.to_dict())


async def delete_tenant(request: web.Request) -> web.Response:
    """DELETE /admin/tenants/{name}: erase the tenant and everything it owns (see tenant_erase)."""
    state = state_of(request)
    ctx = ctx_of(request)
    try:
        erased = await erase_tenant(state, request.match_info["name"], principal_of(request).key_id,
                                    ctx.request_id)
    except StoreError as exc:
        raise _store_error(exc) from None
    return web.json_response({"deleted": True, "tenant": request.match_info["name"], "erased": erased})


def _tenant_fields(body, known_only: bool) -> dict:
    """The tenant fields present in the body (null kept: it means "back to the default")."""
    if known_only:
        unknown = sorted(k for k in body.data if k not in FIELDS)
        if unknown:
            raise ApiError(400, f"unknown field '{unknown[0]}'; a tenant has: {', '.join(FIELDS)}",
                           unknown[0], "unknown_parameter")
    fields = {k: body.data[k] for k in FIELDS if k in body.data}
    for name, value in fields.items():  # JSON writers may send 5.0 for 5
        if name in LIMIT_FIELDS and isinstance(value, float) and value.is_integer():
            fields[name] = int(value)
    return fields


def _store_error(exc: StoreError) -> ApiError:
    if isinstance(exc, UnknownTenantError):
        return not_found(str(exc), "name", "tenant_not_found")
    return ApiError(400, str(exc), exc.param, "invalid_value")


async def list_keys(request: web.Request) -> web.Response:
    tenant = request.query.get("tenant") or None
    return web.json_response({"keys": state_of(request).store.list_keys(tenant)})


async def create_key(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json(request, state.config.max_body_bytes)
    role = body.string("role", "tenant", max_len=16)
    if role not in ROLES:
        raise ApiError(400, f"'role' must be one of {', '.join(ROLES)}", "role", "invalid_value")
    tenant = body.string("tenant", "admin" if role == "admin" else None, max_len=64)
    if tenant is None:
        raise ApiError(400, "'tenant' is required", "tenant", "missing_required_parameter")
    try:
        key_id, key = state.store.create_key(tenant, role, body.string("name", "", max_len=200,
                                                                        allow_empty=True))
    except StoreError as exc:
        raise not_found(str(exc), "tenant", "tenant_not_found") from None
    return web.json_response({"id": key_id, "key": key, "tenant": tenant, "role": role}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    key_id = request.match_info["key_id"]
    if not state_of(request).store.revoke_key(key_id):
        raise not_found(f"no active key with id '{key_id}'", "key_id", "key_not_found")
    return web.json_response({"revoked": True, "id": key_id})


async def flush_cache(request: web.Request) -> web.Response:
    state = state_of(request)
    state.need_engine()
    flushed = 0
    for engine in state.engines:  # each loaded model version has its own cache
        flushed += await asyncio.to_thread(engine.flush_prefix_cache)
    return web.json_response({"flushed_blocks": flushed})


async def pin_prefix(request: web.Request) -> web.Response:
    """Compute a prefix once and keep its KV blocks cached for good (never evicted or flushed).

    Body: {"messages": [...system messages...]} or {"prompt": "text"}; optional "tenant" (whose cache
    namespace; default: the admin's own) and "public" (shared by every tenant; default false).
    """
    from appliance.server.openai_params import parse_messages

    state = state_of(request)
    body = await read_json(request, state.config.max_body_bytes)
    engine = state.need_engine()
    public = body.boolean("public", False)
    tenant = body.string("tenant", principal_of(request).tenant, max_len=64)
    if body.has("messages"):
        messages = parse_messages(body)
        ids = await asyncio.to_thread(engine.tokenizer.encode_chat_prefix, messages)
    else:
        ids = await asyncio.to_thread(engine.tokenizer.encode, body.string("prompt", max_len=1 << 20))
    if len(ids) < engine.block_size + 1:
        raise ApiError(400, f"a pinned prefix needs more than {engine.block_size} tokens",
                       "prompt", "invalid_value")
    try:
        engine.validate("pin", ids, _pin_params())
    except InvalidRequestError as exc:
        raise ApiError(400, str(exc), "prompt", exc.code or "invalid_value") from None
    tokens = await engine.pin_prefix(f"pin-{time.monotonic_ns()}", ids, salt="" if public else tenant,
                                     public=public)
    return web.json_response({"pinned_tokens": tokens, "tenant": None if public else tenant,
                              "public": public})


def _pin_params():
    from engine import SamplingParams

    return SamplingParams(max_tokens=1, temperature=0.0)


async def unpin_all(request: web.Request) -> web.Response:
    state = state_of(request)
    state.need_engine()
    unpinned = 0
    for engine in state.engines:
        unpinned += await asyncio.to_thread(engine.unpin_all)
    return web.json_response({"unpinned_blocks": unpinned})


async def pause(request: web.Request) -> web.Response:
    state = state_of(request)
    state.admission.is_paused = True
    return web.json_response(state.admission.snapshot())


async def resume(request: web.Request) -> web.Response:
    state = state_of(request)
    state.admission.is_paused = False
    return web.json_response(state.admission.snapshot())


async def audit(request: web.Request) -> web.Response:
    try:
        limit = min(1000, max(1, int(request.query.get("limit", "100"))))
    except ValueError:
        raise ApiError(400, "'limit' must be an integer", "limit", "invalid_type") from None
    rows = await asyncio.to_thread(state_of(request).store.audit_rows, limit)
    return web.json_response({"entries": rows})
