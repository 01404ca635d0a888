"""The aiohttp application: routes, the probes, and the background loading of model and retrieval.

The HTTP listener comes up first and answers /health with 503 while the model and the retrieval
service load in worker threads; the engine's step loop then runs in its own thread.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from appliance.server import (
    admin_routes,
    chunk_routes,
    collection_routes,
    model_routes,
    openai_routes,
    rag_routes,
    trace_routes,
)
from appliance.server.admin_routes import server_status
from appliance.server.alert_routes import alerting, list_alerts
from appliance.server.config import ServerConfig
from appliance.server.fleet import Fleet
from appliance.server.gateway import gateway
from appliance.server.metering import metering
from appliance.server.metrics import kv_footprint_families, render_families
from appliance.server.model_registry import ModelRegistry
from appliance.server.openapi import openapi_document
from appliance.server.state import STATE, AppState, state_of
from appliance.server.store import ControlStore

log = logging.getLogger(__name__)
STATS_SAMPLE_INTERVAL_S = 1.0


async def health(request: web.Request) -> web.Response:
    state = state_of(request)
    status = server_status(state)
    body = {"status": status, "model": state.model_name or None}
    if state.load_error:
        body["error"] = state.load_error
    if state.engine is not None:
        engine_health = state.engine.health()
        body["engine_faults"] = engine_health.num_faults
        if engine_health.last_fault:
            body["last_engine_fault"] = engine_health.last_fault
    ready = status in ("ready", "paused")
    headers = {} if ready else {"Retry-After": "5"}
    return web.json_response(body, status=200 if ready else 503, headers=headers)


async def metrics(request: web.Request) -> web.Response:
    state = state_of(request)
    if state.engine is None:
        return web.Response(text="# the model is loading\n", status=503, headers={"Retry-After": "5"})
    stats = await state.engine.get_stats()
    footprint = await asyncio.to_thread(state.engine.kv_footprint)
    text = state.metrics.render(stats, state.admission.num_queued) + render_families(
        [*kv_footprint_families(footprint), *state.cost.metric_families(),
         *model_routes.version_families(state)])
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Prometheus-Format": "0.0.4"})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(state_of(request).model_name))


async def index(request: web.Request) -> web.Response:
    return web.json_response({"name": "appliance", "openapi": "/openapi.json", "health": "/health"})


def _routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", index)
    r.add_get("/health", health)
    r.add_get("/metrics", metrics)
    r.add_get("/openapi.json", openapi)
    r.add_get("/v1/models", openai_routes.list_models)
    r.add_get("/v1/models/{model}", openai_routes.get_model)
    r.add_post("/v1/chat/completions", openai_routes.chat_completions)
    r.add_post("/v1/completions", openai_routes.completions)
    r.add_post("/v1/rag/retrieve", rag_routes.retrieve)
    r.add_post("/v1/rag/query", rag_routes.query)
    r.add_get("/v1/collections", rag_routes.list_collections)
    r.add_get("/v1/collections/{collection}/documents", rag_routes.list_documents)
    r.add_post("/v1/collections/{collection}/documents", rag_routes.upload_documents)
    r.add_delete("/v1/collections/{collection}/documents/{doc_id}", rag_routes.delete_document)
    r.add_get("/v1/collections/{collection}/settings", collection_routes.get_settings)
    r.add_patch("/v1/collections/{collection}/settings", collection_routes.update_settings)
    r.add_get("/admin/stats", admin_routes.stats)
    r.add_get("/admin/tenants", admin_routes.list_tenants)
    r.add_post("/admin/tenants", admin_routes.create_tenant)
    r.add_patch("/admin/tenants/{name}", admin_routes.update_tenant)
    r.add_delete("/admin/tenants/{name}", admin_routes.delete_tenant)
    r.add_get("/admin/keys", admin_routes.list_keys)
    r.add_post("/admin/keys", admin_routes.create_key)
    r.add_delete("/admin/keys/{key_id}", admin_routes.revoke_key)
    r.add_post("/admin/cache/flush", admin_routes.flush_cache)
    r.add_post("/admin/cache/pin", admin_routes.pin_prefix)
    r.add_post("/admin/cache/unpin", admin_routes.unpin_all)
    r.add_post("/admin/chunks/precompute", chunk_routes.precompute)
    r.add_post("/admin/admission/pause", admin_routes.pause)
    r.add_post("/admin/admission/resume", admin_routes.resume)
    r.add_get("/admin/audit", admin_routes.audit)
    r.add_get("/admin/models", model_routes.list_models)
    r.add_post("/admin/models", model_routes.add_model)
    r.add_post("/admin/models/promote", model_routes.promote)
    r.add_post("/admin/models/rollback", model_routes.rollback)
    r.add_put("/admin/models/rules", model_routes.set_rules)
    r.add_put("/admin/models/access", model_routes.set_access)
    r.add_get("/admin/models/{name}", model_routes.get_model)
    r.add_post("/admin/models/{name}/canary", model_routes.set_canary)
    r.add_post("/admin/models/{name}/promote", model_routes.promote)
    r.add_post("/admin/models/{name}/retire", model_routes.retire)
    r.add_get("/admin/alerts", list_alerts)
    r.add_get("/admin/traces", trace_routes.traces)
    r.add_post("/admin/tracing", trace_routes.set_tracing)


def create_app(config: ServerConfig, store: ControlStore | None = None) -> web.Application:
    store = store or ControlStore.open(config.data_path)
    if config.admin_key:
        store.bootstrap_admin_key(config.admin_key)
    # The body limit is enforced per route (JSON vs uploads); aiohttp's own limit is the larger one.
    # metering wraps the gateway: it sees each request's final status and filled-in context.
    app = web.Application(middlewares=[metering, gateway],
                          client_max_size=max(config.max_body_bytes, config.max_upload_bytes))
    app[STATE] = AppState.create(config, store)
    app.cleanup_ctx.append(alerting)
    _routes(app)
    return app


async def load_components(state: AppState) -> None:
    """Load the retrieval service and the live model version side by side, then serve; the canary and
    a version kept for rollback come back in the background (see fleet)."""
    from rag import RagService

    cfg = state.config
    fleet = Fleet(cfg, ModelRegistry(state.store), state.version_metrics)
    rag_task = asyncio.create_task(asyncio.to_thread(RagService, cfg.data_path, cfg.qdrant_url))
    try:
        await fleet.start()
    except BaseException:
        rag_task.add_done_callback(_close_rag_result)
        await fleet.close()
        raise
    try:
        rag = await rag_task
    except BaseException:
        await fleet.close()
        raise
    state.fleet, state.rag = fleet, rag
    stats = state.need_engine().stats()
    log.info("ready: model %s (version %s), %d KV blocks of %d tokens", state.model_name,
             fleet.live_version().name, stats.num_blocks, stats.block_size)


def _close_rag_result(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()


async def sample_rates(state: AppState) -> None:
    """Feed the throughput window in /admin/stats from the engine's counters, once a second."""
    while True:
        await asyncio.sleep(STATS_SAMPLE_INTERVAL_S)
        if state.engine is not None:
            stats = await state.engine.get_stats()
            state.metrics.rates.sample(stats.prompt_tokens_total, stats.generation_tokens_total)
