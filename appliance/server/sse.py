"""Server-sent events: `data: <json>` frames, `data: [DONE]` at the end, errors as a data frame."""

from __future__ import annotations

import json

from aiohttp import web

from appliance.server.errors import ApiError, sse_error_event
from appliance.server.state import RequestContext


def _frame(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


class SseWriter:
    def __init__(self, request: web.Request, ctx: RequestContext) -> None:
        self.request = request
        self.ctx = ctx
        self.response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "x-request-id": ctx.request_id,
            **ctx.trace.headers(),
            **ctx.version_headers(),
        })

    async def start(self) -> None:
        await self.response.prepare(self.request)

    async def send(self, obj: dict) -> None:
        await self.response.write(_frame(obj))

    async def done(self) -> None:
        await self.response.write(b"data: [DONE]\n\n")
        await self.response.write_eof()

    async def fail(self, err: ApiError) -> None:
        """Send the error as the stream's last event; a client already gone is not an error."""
        self.ctx.error_code = err.code or err.type
        self.ctx.stream_error_status = err.status
        try:
            await self.response.write(sse_error_event(err))
            await self.response.write(b"data: [DONE]\n\n")
            await self.response.write_eof()
        except ConnectionResetError:
            self.ctx.client_gone = True
