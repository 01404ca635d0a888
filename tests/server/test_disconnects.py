"""200 streaming requests at concurrency 32, a fifth of them dropped mid-stream by the client.

Nothing may fail with a 5xx, and once the dust settles the engine holds no running request and no
KV block referenced by a request: every disconnect aborted its engine request and freed its blocks.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.server.helpers import ADMIN_KEY, auth

NUM_REQUESTS = 200
CONCURRENCY = 32
MAX_TOKENS = 2
DROPPED_MAX_TOKENS = 256
SETTLE_TIMEOUT_S = 30


async def _one(session: aiohttp.ClientSession, url: str, model: str, index: int, drop: bool) -> dict:
    # A stream the client drops asks for many tokens, so only an abort can end it early.
    body = {"model": model, "max_tokens": DROPPED_MAX_TOKENS if drop else MAX_TOKENS, "stream": True,
            "ignore_eos": True,
            "messages": [{"role": "user", "content": f"Request {index}: say something."}]}
    async with session.post(url + "/v1/chat/completions", json=body, headers=auth(ADMIN_KEY)) as resp:
        if resp.status != 200:
            return {"status": resp.status, "done": False, "dropped": False}
        num_events = 0
        async for line in resp.content:
            if not line.startswith(b"data: "):
                continue
            num_events += 1
            if drop and num_events == 2:  # the role chunk and one token arrived: hang up now
                resp.connection.transport.abort()
                return {"status": 200, "done": False, "dropped": True}
            if line.strip() == b"data: [DONE]":
                return {"status": 200, "done": True, "dropped": False}
    return {"status": resp.status, "done": False, "dropped": False}


async def _load(url: str, model: str) -> list[dict]:
    gate = asyncio.Semaphore(CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def guarded(i: int) -> dict:
            async with gate:
                try:
                    return await _one(session, url, model, i, drop=i % 5 == 0)
                except aiohttp.ClientError as exc:
                    return {"status": None, "error": repr(exc), "done": False, "dropped": False}

        return await asyncio.gather(*(guarded(i) for i in range(NUM_REQUESTS)))


def _settled(server) -> dict:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        stats = server.get_json("/admin/stats")
        idle = stats["requests"]["running"] == 0 and stats["requests"]["waiting"] == 0
        if (idle and stats["kv"]["used_blocks"] == 0) or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


def test_disconnects_free_everything_and_nothing_fails(server, run):
    before = server.get_json("/admin/stats")["requests"]["finished"].get("abort", 0)
    results = run(_load(server.url, server.model))
    assert [r for r in results if r["status"] is None] == []
    assert all(r["status"] == 200 for r in results), {r["status"] for r in results}
    dropped = sum(r["dropped"] for r in results)
    assert dropped == NUM_REQUESTS // 5
    assert sum(r["done"] for r in results) == NUM_REQUESTS - dropped
    stats = _settled(server)
    assert stats["requests"]["running"] == 0 and stats["requests"]["waiting"] == 0
    assert stats["kv"]["used_blocks"] == 0
    assert stats["admission"]["inflight"] == 0 and stats["admission"]["queued_requests"] == 0
    # The dropped streams were aborted in the engine, not run to completion.
    assert stats["requests"]["finished"].get("abort", 0) - before == dropped
    assert server.health() == 200


def test_non_streaming_client_timeout_aborts_the_request(server, run):
    async def go():
        body = {"model": server.model, "prompt": "Count slowly:", "max_tokens": 2000, "ignore_eos": True}
        timeout = aiohttp.ClientTimeout(total=3)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            try:
                async with s.post(server.url + "/v1/completions", json=body, headers=auth(ADMIN_KEY)) as r:
                    return r.status
            except asyncio.TimeoutError:
                return "timeout"

    before = server.get_json("/admin/stats")["requests"]["finished"].get("abort", 0)
    assert run(go()) == "timeout"
    stats = _settled(server)
    assert stats["requests"]["running"] == 0 and stats["kv"]["used_blocks"] == 0
    assert stats["requests"]["finished"].get("abort", 0) == before + 1
    assert stats["totals"]["generation_tokens"] > 0
