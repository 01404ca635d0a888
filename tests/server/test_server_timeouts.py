"""No request can wait forever (issue 10, item 3 and 4), and no audit row is lost at shutdown.

A server with a 2 s request deadline and a near-zero ingest timeout: a long generation ends with a
504 `timeout` (non-streaming) or an SSE error event after what was already sent (streaming), and
frees its engine slot; an upload whose ingest passes the timeout gets a 504 while the ingest goes on
in the background. The last test stops the server and finds every audit row in SQLite.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time

import aiohttp
import pytest

from tests.server.conftest import make_tenant
from tests.server.helpers import ServerProcess, assert_openai_error, auth, served
from tests.server.isolation_helpers import WAIT_S, complete, long_completion, stream_events, upload

REQUEST_TIMEOUT_S = 2
TIMEOUTS_ENV = {"APPLIANCE_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S), "APPLIANCE_INGEST_TIMEOUT_S": "0.001"}
CLIENT_TIMEOUT_S = 60  # far beyond the server's deadline; the long generation would need minutes
NOTE = b"The Varnholm lighthouse was built by Ada Krell in 1871 from granite quarried on the island."


@pytest.fixture(scope="module")
def timeouts_server(tmp_path_factory):
    with served(ServerProcess(tmp_path_factory.mktemp("timeouts") / "data", TIMEOUTS_ENV),
                check_exit=False) as proc:
        yield proc


@pytest.fixture(scope="module")
def key(timeouts_server) -> str:
    return make_tenant(timeouts_server, "deadline-tenant")


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S))


def _settled(server: ServerProcess) -> dict:
    deadline = time.monotonic() + WAIT_S
    while True:
        stats = server.get_json("/admin/stats")
        if stats["requests"]["running"] == 0 or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


def test_deadline_gives_504_timeout(timeouts_server, key, run):
    server = timeouts_server

    async def go():
        async with _session() as s:
            return await complete(s, server, key, {"prompt": "Count slowly:", "max_tokens": 3000,
                                                   "ignore_eos": True})

    status, payload, _ = run(go())
    err = assert_openai_error(status, payload, 504)
    assert err["code"] == "timeout" and err["type"] == "timeout_error"
    stats = _settled(server)
    assert stats["requests"]["running"] == 0 and stats["kv"]["used_blocks"] == 0


def test_deadline_ends_a_stream_with_an_error_event(timeouts_server, key, run):
    server = timeouts_server

    async def go():
        async with _session() as s:
            return await stream_events(s, server.url + "/v1/completions", long_completion(server.model), key)

    status, events, _ = run(go())
    assert status == 200 and events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "timeout", events[-3:]
    deltas = events[:-2]
    assert all(e["choices"][0]["finish_reason"] is None for e in deltas)  # no normal end was sent
    assert sum(len(e["choices"][0]["text"]) for e in deltas) > 0  # what was made before the end arrived
    assert _settled(server)["kv"]["used_blocks"] == 0


def test_ingest_timeout_gives_504_and_the_ingest_goes_on(timeouts_server, key, run):
    server = timeouts_server

    async def go():
        async with _session() as s:
            return await upload(s, server, key, "slow-kb", {"note.txt": NOTE})

    status, payload, _ = run(go())
    assert assert_openai_error(status, payload, 504)["code"] == "timeout"

    async def listed() -> int:
        async with _session() as s, s.get(server.url + "/v1/collections/slow-kb/documents",
                                          headers=auth(key)) as r:
            return r.status

    deadline = time.monotonic() + WAIT_S
    while run(listed()) != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run(listed()) == 200
    deadline = time.monotonic() + WAIT_S
    while server.get_json("/admin/stats")["admission"]["upload_bytes"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.get_json("/admin/stats")["admission"]["upload_bytes"] == 0


def test_every_audit_row_is_written_by_a_graceful_shutdown(timeouts_server, key, run):
    """Runs last in this module: it stops the server while streams are still running."""
    server = timeouts_server
    body = {"model": server.model, "prompt": "Hello", "max_tokens": 8, "ignore_eos": True, "stream": True}

    async def get(s: aiohttp.ClientSession) -> str:
        async with s.get(server.url + "/v1/models", headers=auth(key)) as r:
            assert r.status == 200
            return r.headers["x-request-id"]

    async def go() -> list[str]:
        async with _session() as s:
            request_ids = await asyncio.gather(*(get(s) for _ in range(40)))
            streams = await asyncio.gather(*(s.post(server.url + "/v1/completions", json=body,
                                                    headers=auth(key)) for _ in range(16)))
            server.terminate()  # the streams' rows are handed over during the drain, just before exit
            for resp in streams:
                assert resp.status == 200
                await resp.read()
                request_ids.append(resp.headers["x-request-id"])
                resp.release()
            return request_ids

    request_ids = run(go())
    assert server.stop() == 0, server.log()
    with sqlite3.connect(server.data_dir / "control.db") as db:
        marks = ",".join("?" * len(request_ids))
        sql = f"SELECT request_id FROM audit WHERE request_id IN ({marks})"
        rows = db.execute(sql, request_ids).fetchall()
    assert sorted(r for (r,) in rows) == sorted(request_ids)
