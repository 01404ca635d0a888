"""Startup, backpressure and SIGTERM drain of a real `appliance serve` process with tight limits."""

from __future__ import annotations

import asyncio
import sqlite3

import aiohttp
import pytest

from tests.server.helpers import ADMIN_KEY, ServerProcess, assert_openai_error, auth, sse_events

DRAIN_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    proc = ServerProcess(tmp_path_factory.mktemp("tight") / "data", {
        "APPLIANCE_MAX_QUEUED_REQUESTS": "2",
        "APPLIANCE_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
    }).start()
    seen = proc.wait_ready()
    yield proc, seen
    proc.stop()


def test_health_is_503_while_loading(tight):
    _, seen = tight
    reachable = [s for s in seen if s is not None]
    assert reachable[0] == 503 and reachable[-1] == 200


def test_bounded_queue_refuses_with_503_and_retry_after(tight, run):
    proc, _ = tight

    async def one(session, i):
        body = {"model": proc.model, "prompt": f"Item {i}:", "max_tokens": 2}
        async with session.post(proc.url + "/v1/completions", json=body, headers=auth(ADMIN_KEY)) as r:
            return r.status, await r.json(), r.headers.get("Retry-After")

    async def burst():
        async with aiohttp.ClientSession() as s:
            return await asyncio.gather(*(one(s, i) for i in range(12)))

    results = run(burst())
    statuses = sorted(r[0] for r in results)
    assert set(statuses) == {200, 503}, statuses
    assert statuses.count(200) >= 2
    for status, payload, retry_after in results:
        if status == 503:
            assert assert_openai_error(status, payload, 503)["code"] == "server_overloaded"
            assert int(retry_after) > 0
    assert proc.get_json("/admin/stats")["admission"]["queued_requests"] == 0


async def _stream(session, proc, max_tokens: int, first_token: asyncio.Event) -> list:
    body = {"model": proc.model, "prompt": "Once upon a time", "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True}
    raw = []
    async with session.post(proc.url + "/v1/completions", json=body, headers=auth(ADMIN_KEY)) as r:
        assert r.status == 200
        async for line in r.content:
            raw.append(line.decode())
            if line.startswith(b"data: {"):
                first_token.set()
    return sse_events("".join(raw))


def test_sigterm_drains_then_exits_zero(tight, run):
    proc, _ = tight

    async def scenario():
        async with aiohttp.ClientSession() as s:
            short_started, long_started = asyncio.Event(), asyncio.Event()
            short = asyncio.create_task(_stream(s, proc, 8, short_started))
            long = asyncio.create_task(_stream(s, proc, 4000, long_started))
            await asyncio.wait_for(asyncio.gather(short_started.wait(), long_started.wait()), 120)
            proc.terminate()
            await asyncio.sleep(0.5)
            async with s.get(proc.url + "/health") as r:
                health = r.status, (await r.json())["status"]
            body = {"model": proc.model, "prompt": "late", "max_tokens": 2}
            async with s.post(proc.url + "/v1/completions", json=body, headers=auth(ADMIN_KEY)) as r:
                late = r.status, await r.json(), r.headers.get("Retry-After")
            return health, late, await short, await long

    health, late, short, long = run(scenario())
    assert health == (503, "draining")
    assert assert_openai_error(late[0], late[1], 503)["code"] == "server_shutting_down" and late[2]
    # The short request finished inside the drain window, normally.
    assert short[-1] == "[DONE]" and short[-2]["choices"][0]["finish_reason"] == "length"
    # The long one could not: it was aborted at the drain timeout and told so in-stream.
    assert long[-1] == "[DONE]" and long[-2]["error"]["code"] == "server_shutting_down"
    assert proc.proc.wait(timeout=60) == 0
    with sqlite3.connect(proc.data_dir / "control.db") as db:
        rows = db.execute("SELECT status, completion_tokens, error_code FROM audit "
                          "WHERE route = '/v1/completions' ORDER BY id DESC LIMIT 3").fetchall()
    assert (200, 8, None) in rows
    assert any(status == 200 and code == "server_shutting_down" for status, _, code in rows)
