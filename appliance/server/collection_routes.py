"""`GET/PATCH /v1/collections/{collection}/settings`: a collection's defaults, for the caller's tenant.

One setting so far: `kv_reuse`, the mode /v1/rag/query takes when a request names none; null
inherits the server's `rag_kv_reuse` (the precedence lives in rag_routes.effective_kv_reuse). PATCH
sets the fields it names and null puts one back to inheriting, as `PATCH /admin/tenants/{name}` does.
The collection must exist among the caller's own: another tenant's collection of the same name is
a different collection with settings of its own.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from appliance.server.errors import bad_request
from appliance.server.params import Body, read_json
from appliance.server.rag_routes import (
    effective_kv_reuse,
    has_collection,
    kv_reuse_value,
    missing_collection,
    valid_collection,
)
from appliance.server.state import AppState, principal_of, state_of
from rag.collection_settings import SETTING_FIELDS, CollectionSettings


async def get_settings(request: web.Request) -> web.Response:
    state = state_of(request)
    collection = valid_collection(request.match_info["collection"])
    settings = await asyncio.to_thread(_read, state, principal_of(request).tenant, collection)
    return _response(state, collection, settings)


async def update_settings(request: web.Request) -> web.Response:
    state = state_of(request)
    collection = valid_collection(request.match_info["collection"])
    body = await read_json(request, state.config.max_body_bytes)
    changes = _changes(body)
    settings = await asyncio.to_thread(_update, state, principal_of(request).tenant, collection, changes)
    return _response(state, collection, settings)


def _changes(body: Body) -> dict[str, str | None]:
    unknown = sorted(set(body.data) - set(SETTING_FIELDS))
    if unknown:
        raise bad_request(f"unknown field '{unknown[0]}'; a collection has: {', '.join(SETTING_FIELDS)}",
                          unknown[0], "unknown_parameter")
    if not body.data:
        raise bad_request(f"send at least one of: {', '.join(SETTING_FIELDS)}", None,
                          "missing_required_parameter")
    return {"kv_reuse": kv_reuse_value(body)}


def _read(state: AppState, tenant: str, collection: str) -> CollectionSettings:
    _check_exists(state, tenant, collection)
    return state.need_rag().collection_settings(tenant, collection)


def _update(state: AppState, tenant: str, collection: str,
            changes: dict[str, str | None]) -> CollectionSettings:
    _check_exists(state, tenant, collection)
    return state.need_rag().update_collection_settings(tenant, collection, changes)


def _check_exists(state: AppState, tenant: str, collection: str) -> None:
    if not has_collection(state, tenant, collection):
        raise missing_collection(collection)


def _response(state: AppState, collection: str, settings: CollectionSettings) -> web.Response:
    return web.json_response({"collection": collection, "kv_reuse": settings.kv_reuse,
                              "effective_kv_reuse": effective_kv_reuse(state, settings)})
