"""`/admin/models`: model versions, their traffic split and routing rules, promote and roll back.

Each move is one POST; the gateway's audit row records which key made it and when, and the model
events (also in the GET document) add what moved and why.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from appliance.server.canary_guard import OBJECTIVE_FIELDS, objective
from appliance.server.errors import bad_request, not_found
from appliance.server.model_routing import RuleError, parse_rules
from appliance.server.params import Body, read_json
from appliance.server.quality_stats import MetricFamily
from appliance.server.state import AppState, ctx_of, principal_of, state_of
from appliance.server.store import valid_name

QUANTIZATIONS = ("auto", "none", "int8", "int4")
DTYPES = ("auto", "float32", "bfloat16", "float16")
NUM_EVENTS = 20


def models_overview(state: AppState) -> dict:
    """Versions with their memory, in-flight requests and metrics; the split; rules; the budget."""
    fleet = state.fleet
    if fleet is None:
        return {"served_model": None, "versions": [], "rules": [], "access": {}}
    canary, live = fleet.canary_version(), fleet.live_version()
    return {
        "served_model": fleet.alias,
        "live": live.name if live else None,
        "canary": canary.name if canary else None,
        "canary_share": canary.canary_share if canary else 0.0,
        "canary_tenants": canary.canary_tenants if canary else [],
        "previous_live": fleet.previous_live,
        "memory": {"budget_bytes": fleet.budget_bytes(), "used_bytes": fleet.used_bytes()},
        "versions": [_version_doc(state, v) for v in fleet.versions.values()],
        "rules": [{**rule.to_dict(), "hits": _rule_hits(state, rule.version, rule.name)}
                  for rule in fleet.rules],
        "access": fleet.access,
        "canary_objective": objective(state.config, canary.objective if canary else {}),
    }


def _version_doc(state: AppState, version) -> dict:
    resident = state.fleet.residents.get(version.name)
    doc = version.to_dict()
    doc["loaded"] = resident is not None
    doc["memory_bytes"] = resident.memory_bytes if resident else 0
    doc["in_flight"] = resident.num_inflight if resident else 0
    if resident is not None:
        stats = resident.engine.stats()
        doc["engine"] = {"running": stats.num_running, "waiting": stats.num_waiting,
                         "kv_usage_perc": stats.usage_perc, "num_blocks": stats.num_blocks,
                         "prefix_hit_rate": stats.hit_rate}
    doc["metrics"] = state.version_metrics.snapshot(version.name)
    return doc


def _rule_hits(state: AppState, version: str, rule: str) -> int:
    return state.version_metrics.snapshot(version)["routes"].get(f"rule:{rule}", 0)


def version_families(state: AppState) -> list[MetricFamily]:
    """/metrics: per-version request and latency families plus each loaded engine's load."""
    families = state.version_metrics.metric_families()
    if state.fleet is None:
        return families
    rollbacks = [("", {"version": name}, state.fleet.auto_rollbacks.get(name, 0))
                 for name in sorted(state.fleet.versions)]
    running, usage, live = [], [], []
    for name, resident in sorted(state.fleet.residents.items()):
        stats = resident.engine.stats()
        running.append(("", {"version": name}, stats.num_running))
        usage.append(("", {"version": name}, stats.usage_perc))
        live.append(("", {"version": name, "state": state.fleet.versions[name].state}, 1))
    return [*families,
            MetricFamily("model_version_requests_running", "gauge", "Requests in each version's batch.",
                         running),
            MetricFamily("model_version_kv_cache_usage_perc", "gauge",
                         "Share of each version's KV blocks used by live requests (0-1).", usage),
            MetricFamily("model_version_info", "gauge", "Loaded model versions and their state.", live),
            MetricFamily("model_version_auto_rollbacks_total", "counter",
                         "Times the canary guard rolled a version back for breaking its objective.",
                         rollbacks)]


async def list_models(request: web.Request) -> web.Response:
    state = state_of(request)
    state.need_fleet()
    overview = models_overview(state)
    overview["events"] = [e.to_dict() for e in await _events(state)]
    return web.json_response(overview)


async def get_model(request: web.Request) -> web.Response:
    state = state_of(request)
    fleet = state.need_fleet()
    version = fleet.versions.get(request.match_info["name"])
    if version is None:
        raise not_found(f"model version {request.match_info['name']!r} does not exist", "name",
                        "model_not_found")
    return web.json_response(_version_doc(state, version))


async def add_model(request: web.Request) -> web.Response:
    """Body: {name, source (GGUF file or HF dir; "" = the bundled model), quantization, dtype, notes}.
    202 once checked and registered; the version loads in the background (GET shows its state)."""
    state = state_of(request)
    fleet = state.need_fleet()
    body = await read_json(request, state.config.max_body_bytes)
    name = body.string("name", max_len=64)
    if not valid_name(name):
        raise bad_request("'name' must be 1-64 characters of letters, digits, '.', '_' or '-'", "name")
    source = body.string("source", "", max_len=4096)
    quantization = _choice(body, "quantization", QUANTIZATIONS, "none")
    dtype = _choice(body, "dtype", DTYPES, state.config.dtype)
    notes = body.string("notes", "", max_len=2000)
    version = await fleet.add(name, source, quantization, dtype, notes, _actor(request))
    ctx_of(request).audit_detail = {"version": name, "source": source, "quantization": version.quantization}
    return web.json_response(version.to_dict(), status=202)


async def set_canary(request: web.Request) -> web.Response:
    """Body: {share: 0..1, tenants: [names sent to the canary always], objective: {window_s,
    min_requests, max_error_rate, max_ttft_p90_s} (each optional: the server's canary_* otherwise)}."""
    state = state_of(request)
    fleet = state.need_fleet()
    body = await read_json(request, state.config.max_body_bytes)
    share = body.number("share", 0.0, 0.0, 1.0)
    tenants = body.string_list("tenants", 1000)
    goal = _objective(body.obj("objective"))
    version = await fleet.set_canary(request.match_info["name"], share, tenants, goal, _actor(request))
    ctx_of(request).audit_detail = {"version": version.name, "share": share, "tenants": tenants}
    return web.json_response(version.to_dict())


async def promote(request: web.Request) -> web.Response:
    """`/admin/models/promote` promotes the canary; `/admin/models/{name}/promote` a named version."""
    fleet = state_of(request).need_fleet()
    version = await fleet.promote(request.match_info.get("name"), _actor(request))
    ctx_of(request).audit_detail = {"version": version.name, "previous": fleet.previous_live}
    return web.json_response({**version.to_dict(), "previous_live": fleet.previous_live})


async def rollback(request: web.Request) -> web.Response:
    state = state_of(request)
    fleet = state.need_fleet()
    body = await read_json(request, state.config.max_body_bytes) if request.can_read_body else Body({})
    reason = body.string("reason", "", max_len=500) or None
    retired = await fleet.rollback(_actor(request), reason)
    live = fleet.live_version()
    ctx_of(request).audit_detail = {"retired": retired.name, "live": live.name if live else None,
                                    "reason": reason}
    return web.json_response({"retired": retired.name, "live": live.name if live else None})


async def retire(request: web.Request) -> web.Response:
    fleet = state_of(request).need_fleet()
    version = await fleet.retire(request.match_info["name"], _actor(request))
    ctx_of(request).audit_detail = {"version": version.name}
    return web.json_response(version.to_dict())


async def set_rules(request: web.Request) -> web.Response:
    """Body: {rules: [{name, version, tenant?, kind?, min_prompt_tokens?, max_prompt_tokens?}, ...]}."""
    state = state_of(request)
    fleet = state.need_fleet()
    body = await read_json(request, state.config.max_body_bytes)
    try:
        rules = parse_rules(body.raw("rules"))
    except RuleError as exc:
        raise bad_request(str(exc), exc.param) from None
    unknown = [r.version for r in rules if r.version not in fleet.versions]
    if unknown:
        raise bad_request(f"rule names unknown model version {unknown[0]!r}", "version", "model_not_found")
    await fleet.set_rules(rules, _actor(request))
    return web.json_response({"rules": [r.to_dict() for r in rules]})


async def set_access(request: web.Request) -> web.Response:
    """Body: {tenant, versions: [names] | null (every version)}: the versions a tenant's keys may use."""
    state = state_of(request)
    fleet = state.need_fleet()
    body = await read_json(request, state.config.max_body_bytes)
    tenant = body.string("tenant", max_len=64)
    if await _tenant_missing(state, tenant):
        raise not_found(f"tenant {tenant!r} does not exist", "tenant")
    versions = None if body.raw("versions") is None else body.string_list("versions", 100)
    await fleet.set_access(tenant, versions, _actor(request))
    return web.json_response({"tenant": tenant, "versions": versions})


async def _tenant_missing(state: AppState, tenant: str) -> bool:
    return await asyncio.to_thread(state.store.get_tenant, tenant) is None


async def _events(state: AppState) -> list:
    return await asyncio.to_thread(state.fleet.registry.events, NUM_EVENTS)


def _objective(raw: dict) -> dict[str, float]:
    unknown = sorted(set(raw) - set(OBJECTIVE_FIELDS))
    if unknown:
        raise bad_request(f"unknown objective field {unknown[0]!r}; known: {', '.join(OBJECTIVE_FIELDS)}",
                          "objective")
    goal = Body(raw)
    out = {name: goal.number(name, None, 0.0) for name in raw if raw[name] is not None}
    if out.get("window_s") == 0:
        raise bad_request("'objective.window_s' must be positive", "objective")
    return out


def _choice(body: Body, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = body.string(name, default, max_len=32)
    if value not in allowed:
        raise bad_request(f"'{name}' must be one of {', '.join(allowed)}", name)
    return value


def _actor(request: web.Request) -> str:
    return principal_of(request).key_id

