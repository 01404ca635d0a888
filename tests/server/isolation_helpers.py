"""HTTP helpers for the tenant-isolation tests: streams held open, raw uploads, admission polling."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from multidict import CIMultiDict

from tests.server.helpers import ServerProcess, auth, post_json, sse_events

WAIT_S = 120  # generous bound on waits for the server to reach a state (not a timing assertion)
BOUNDARY = "isolation-test-boundary"


class HeldStream:
    """A streamed completion kept open after its first content event, until closed by the test."""

    def __init__(self, session: aiohttp.ClientSession, url: str, body: dict, key: str) -> None:
        self.session, self.url, self.body, self.key = session, url, body, key
        self.started = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def open(self) -> HeldStream:
        self.task = asyncio.create_task(self._run())
        waiter = asyncio.create_task(self.started.wait())
        await asyncio.wait({waiter, self.task}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        status = self.task.result() if self.task.done() else None
        assert self.started.is_set(), f"the stream did not start (status {status})"
        return self

    async def _run(self) -> int:
        async with self.session.post(self.url, json=self.body, headers=auth(self.key)) as resp:
            if resp.status != 200:
                return resp.status
            async for line in resp.content:
                if line.startswith(b"data: {") and b'"text":""' not in line and b'"role"' not in line:
                    self.started.set()
                    await asyncio.Event().wait()  # hold the stream open until cancelled
        return 200

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


def long_completion(model: str, max_tokens: int = 3000) -> dict:
    return {"model": model, "prompt": "Once upon a time", "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True}


async def stream_events(session: aiohttp.ClientSession, url: str, body: dict, key: str
                        ) -> tuple[int, list, dict]:
    """Send a streamed request and read it to the end: (status, SSE events, headers)."""
    async with session.post(url, json=body, headers=auth(key)) as resp:
        raw = await resp.text()
        events = sse_events(raw) if resp.status == 200 else [json.loads(raw)]
        return resp.status, events, CIMultiDict(resp.headers)


async def complete(session: aiohttp.ClientSession, server: ServerProcess, key: str, body: dict
                   ) -> tuple[int, dict, dict]:
    return await post_json(session, server.url + "/v1/completions", {"model": server.model, **body}, key)


def wait_for_admission(server: ServerProcess, check, what: str) -> dict:
    """Poll /admin/stats until check(admission snapshot) holds; returns that snapshot."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        admission = server.get_json("/admin/stats")["admission"]
        if check(admission):
            return admission
        time.sleep(0.05)
    raise AssertionError(f"the server never reached: {what}; last admission {admission}")


def multipart_body(files: dict[str, bytes]) -> bytes:
    parts = []
    for name, data in files.items():
        head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                "Content-Type: text/plain\r\n\r\n").encode()
        parts.append(head + data + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def upload(session: aiohttp.ClientSession, server: ServerProcess, key: str, collection: str,
                 files: dict[str, bytes]) -> tuple[int, dict, dict]:
    headers = {**auth(key), "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    url = f"{server.url}/v1/collections/{collection}/documents"
    async with session.post(url, data=multipart_body(files), headers=headers) as resp:
        return resp.status, await resp.json(content_type=None), CIMultiDict(resp.headers)


class SlowUpload:
    """An upload over a raw socket: headers and the first bytes now, the rest when the test says."""

    def __init__(self, server: ServerProcess, key: str, collection: str, files: dict[str, bytes]) -> None:
        self.server, self.key, self.collection = server, key, collection
        self.body = multipart_body(files)
        self.writer: asyncio.StreamWriter | None = None
        self.reader: asyncio.StreamReader | None = None

    async def start(self, first_bytes: int = 1000) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        head = (f"POST /v1/collections/{self.collection}/documents HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {self.key}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n").encode()
        self.writer.write(head + self.body[:first_bytes])
        await self.writer.drain()

    def abort(self) -> None:
        assert self.writer is not None
        self.writer.transport.abort()
