"""A small real aiohttp server that replays a recorded RAG answer for the Ask screen's snapshot.

It answers what the Ask screen asks, in the server's shapes: the tenants (/admin/tenants), a minted
key and its revocation (/admin/keys), the key's collections (/v1/collections) and, for
/v1/rag/query, the SSE frames in ask_frames.json: recorded from the real appliance (SmolLM2, the
bundled bakery sample in a collection renamed `handbook`, temperature 0) and replayed byte for
byte, with a fixed `X-Trace-Id` header as the tracing server sends.
"""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from tests.server.helpers import ADMIN_KEY
from tests.threaded_app import ThreadedApp

FRAMES = Path(__file__).with_name("ask_frames.json")
QUESTION = "Who runs the Brindle Street Bakery today?"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
KEY_ID = "0a1b2c3d4e5f"
TENANT_KEY = f"apk_{KEY_ID}_replayed-tenant-key"
TENANTS = ("acme", "admin", "globex")
COLLECTIONS = ("handbook", "manuals")


class AskReplay(ThreadedApp):
    """`with AskReplay() as replay:` serves on 127.0.0.1 from its own thread until the block ends."""

    def __init__(self) -> None:
        super().__init__()
        self.revoked: list[str] = []

    def build(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/admin/tenants", self._tenants)
        app.router.add_post("/admin/keys", self._mint)
        app.router.add_delete("/admin/keys/{key_id}", self._revoke)
        app.router.add_get("/v1/collections", self._collections)
        app.router.add_post("/v1/rag/query", self._query)
        return app

    async def _tenants(self, request: web.Request) -> web.Response:
        return web.json_response({"tenants": [{"name": name} for name in TENANTS]})

    async def _mint(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"id": KEY_ID, "key": TENANT_KEY, "tenant": body["tenant"],
                                  "role": body.get("role", "tenant")}, status=201)

    async def _revoke(self, request: web.Request) -> web.Response:
        self.revoked.append(request.match_info["key_id"])
        return web.json_response({"revoked": True, "id": request.match_info["key_id"]})

    async def _collections(self, request: web.Request) -> web.Response:
        mine = request.headers.get("Authorization") == f"Bearer {TENANT_KEY}"
        names = COLLECTIONS if mine else ()
        return web.json_response({"collections": [{"name": n, "documents": 1, "chunks": 1} for n in names]})

    async def _query(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if request.headers.get("Authorization") not in (f"Bearer {TENANT_KEY}", f"Bearer {ADMIN_KEY}"):
            return web.json_response({"error": {"message": "invalid API key", "type": "authentication_error",
                                                "param": None, "code": "invalid_api_key"}}, status=401)
        assert body["query"] == QUESTION and body["stream"] is True, body
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Trace-Id": TRACE_ID})
        await response.prepare(request)
        for frame in json.loads(FRAMES.read_text(encoding="utf-8")):
            await response.write(f"data: {frame}\n\n".encode())
        await response.write_eof()
        return response
