"""Tenants are isolated in time and budget (issue 10, item 4), against real servers.

A tenant over its concurrency or queued-token cap gets a 429 of its own while other tenants are
served; the daily token quota ends running streams (counting the tenant's other requests in
flight); uploads share a bounded memory budget (503 beyond it); audit rows of streamed requests are
written by the writer thread.

The limits server has three engine slots (`max_num_seqs` 3), so streams held open by the test decide
exactly which requests run and which wait in the queue; its upload budget is 80 kB.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.server.conftest import make_tenant
from tests.server.helpers import ADMIN_KEY, ServerProcess, assert_openai_error, served
from tests.server.isolation_helpers import (
    HeldStream,
    SlowUpload,
    complete,
    long_completion,
    stream_events,
    upload,
    wait_for_admission,
)

ENGINE_SLOTS = 3
LIMITS_ENV = {"APPLIANCE_MAX_NUM_SEQS": str(ENGINE_SLOTS), "APPLIANCE_MAX_UPLOAD_BYTES": "60000",
              "APPLIANCE_MAX_UPLOAD_INFLIGHT_BYTES": "80000"}
PROMPT_TOKEN = 2000  # any id of the vocabulary: prompts of an exact token count
QUOTA_SLACK = 8  # tokens a quota may be passed by: the outputs of one step of the tenant's requests
NOTE = b"The Varnholm lighthouse was built by Ada Krell in 1871 from granite quarried on the island."


@pytest.fixture(scope="module")
def limits_server(tmp_path_factory):
    with served(ServerProcess(tmp_path_factory.mktemp("limits") / "data", LIMITS_ENV)) as proc:
        yield proc


def _tenant_queued(name: str, tokens: int):
    return lambda admission: admission.get("tenants", {}).get(name, {}).get("queued_tokens") == tokens


def test_tenant_over_its_concurrency_cap_gets_429_while_another_is_served(limits_server, run):
    server = limits_server
    key_a = make_tenant(server, "cap-a", max_concurrent_requests=2)
    key_b = make_tenant(server, "cap-b")
    short = {"prompt": "Hello", "max_tokens": 2}

    async def go():
        async with aiohttp.ClientSession() as s:
            url = server.url + "/v1/completions"
            held = [await HeldStream(s, url, long_completion(server.model), key_a).open() for _ in range(2)]
            try:
                over = await complete(s, server, key_a, short)
                other = await complete(s, server, key_b, short)
            finally:
                for stream in held:
                    await stream.close()
            await asyncio.to_thread(wait_for_admission, server, lambda a: "cap-a" not in a.get("tenants", {}),
                                    "cap-a's streams ended")
            again = await complete(s, server, key_a, short)
            return over, other, again

    over, other, again = run(go())
    err = assert_openai_error(over[0], over[1], 429)
    assert err["code"] == "tenant_concurrency_limit" and err["type"] == "rate_limit_error"
    assert int(over[2]["Retry-After"]) >= 1
    assert other[0] == 200 and other[1]["usage"]["completion_tokens"] == 2, other
    # The cap counts requests in flight, not requests made: once A's streams ended, A is served again.
    assert again[0] == 200, again


def test_tenant_over_its_queued_token_cap_gets_429(limits_server, run):
    server = limits_server
    key_c = make_tenant(server, "queue-c", max_queued_tokens=150)
    key_d = make_tenant(server, "queue-d", max_queued_tokens=150)
    waiting = {"prompt": [PROMPT_TOKEN] * 100, "max_tokens": 2}

    async def go():
        async with aiohttp.ClientSession() as s:
            url = server.url + "/v1/completions"
            blockers = [await HeldStream(s, url, long_completion(server.model), ADMIN_KEY).open()
                        for _ in range(ENGINE_SLOTS)]
            try:  # every engine slot is taken: what C and D send now waits in the queue
                first = asyncio.create_task(complete(s, server, key_c, waiting))
                await asyncio.to_thread(wait_for_admission, server, _tenant_queued("queue-c", 100),
                                        "C's first request queued")
                over = await complete(s, server, key_c, waiting)
                other = asyncio.create_task(complete(s, server, key_d, waiting))
                await asyncio.to_thread(wait_for_admission, server, _tenant_queued("queue-d", 100),
                                        "D's request queued next to C's")
            finally:
                for stream in blockers:
                    await stream.close()
            return over, await first, await other

    over, first, other = run(go())
    err = assert_openai_error(over[0], over[1], 429)
    assert err["code"] == "tenant_queue_limit" and int(over[2]["Retry-After"]) >= 1
    assert first[0] == 200 and other[0] == 200, (first, other)


def test_upload_over_the_inflight_byte_cap_gets_503(limits_server, run):
    server = limits_server
    key = make_tenant(server, "uploader")

    async def go():
        slow = SlowUpload(server, key, "held", {"held.txt": b"a" * 50_000})
        await slow.start()
        try:
            await asyncio.to_thread(wait_for_admission, server, lambda a: a.get("upload_bytes", 0) >= 50_000,
                                    "the slow upload holds its bytes")
            async with aiohttp.ClientSession() as s:
                refused = await upload(s, server, key, "second", {"second.txt": b"b" * 35_000})
        finally:
            slow.abort()
        await asyncio.to_thread(wait_for_admission, server, lambda a: a["upload_bytes"] == 0,
                                "the abandoned upload gave its bytes back")
        async with aiohttp.ClientSession() as s:
            small = await upload(s, server, key, "small", {"note.txt": NOTE})
        return refused, small

    refused, small = run(go())
    err = assert_openai_error(refused[0], refused[1], 503)
    assert err["code"] == "upload_capacity" and int(refused[2]["Retry-After"]) >= 1
    assert small[0] == 200 and small[1]["results"][0]["status"] == "added", small


def _long_stream(model: str) -> dict:
    return {"model": model, "prompt": "Write a long story about a lighthouse keeper.", "max_tokens": 300,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


def _ended_by_quota(events: list) -> dict:
    """The stream's usage, after checking it ended with "length", its usage, the quota error, [DONE]."""
    assert events[-1] == "[DONE]", events[-3:]
    assert events[-2]["error"]["code"] == "insufficient_quota", events[-3:]
    assert events[-3]["choices"] == [] and events[-3]["usage"] is not None, events[-3:]
    assert events[-4]["choices"][0]["finish_reason"] == "length", events[-4:]
    return events[-3]["usage"]


def test_quota_ends_a_running_stream_with_length_and_an_error_event(server, run):
    quota = 60
    key = make_tenant(server, "quota-mid-stream", token_quota_per_day=quota)

    async def go():
        async with aiohttp.ClientSession() as s:
            return await stream_events(s, server.url + "/v1/completions", _long_stream(server.model), key)

    status, events, _ = run(go())
    assert status == 200
    usage = _ended_by_quota(events)
    assert quota <= usage["total_tokens"] < quota + QUOTA_SLACK and usage["completion_tokens"] < 300, usage
    # The usage row is written (the admin call waits for the writer thread) and the next request is refused.
    row = server.get_json("/admin/stats")["tenants"]["quota-mid-stream"]
    assert row["requests"] == 1 and row["tokens_today"] == usage["total_tokens"], row
    status, payload, headers = run(_plain(server, key))
    assert assert_openai_error(status, payload, 429)["code"] == "insufficient_quota"
    assert headers["x-should-retry"] == "false"


async def _plain(server: ServerProcess, key: str) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as s:
        return await complete(s, server, key, {"prompt": "Hello", "max_tokens": 300, "ignore_eos": True})


def test_quota_counts_the_tenants_requests_in_flight(server, run):
    quota = 120
    key = make_tenant(server, "quota-two-streams", token_quota_per_day=quota)

    async def go():
        async with aiohttp.ClientSession() as s:
            url = server.url + "/v1/completions"
            return await asyncio.gather(*(stream_events(s, url, _long_stream(server.model), key)
                                          for _ in range(2)))

    results = run(go())
    assert [status for status, _, _ in results] == [200, 200]
    totals = [_ended_by_quota(events)["total_tokens"] for _, events, _ in results]
    # Together, not each, the two streams used the quota.
    assert quota <= sum(totals) < quota + QUOTA_SLACK, totals
    assert server.get_json("/admin/stats")["tenants"]["quota-two-streams"]["tokens_today"] == sum(totals)


def test_quota_cut_non_streaming_returns_what_was_generated(server, run):
    quota = 60
    key = make_tenant(server, "quota-plain", token_quota_per_day=quota)
    status, body, _ = run(_plain(server, key))
    assert status == 200 and body["choices"][0]["finish_reason"] == "length", body
    assert quota <= body["usage"]["total_tokens"] < quota + QUOTA_SLACK, body["usage"]
    assert body["choices"][0]["text"] and body["usage"]["completion_tokens"] < 300


def test_streamed_request_has_its_audit_row(server, run):
    key = make_tenant(server, "audit-stream")
    body = {"model": server.model, "prompt": "Hello", "max_tokens": 4, "ignore_eos": True, "stream": True}

    async def go():
        async with aiohttp.ClientSession() as s:
            return await stream_events(s, server.url + "/v1/completions", body, key)

    status, events, headers = run(go())
    assert status == 200 and events[-1] == "[DONE]"
    entries = server.get_json("/admin/audit?limit=1000")["entries"]
    rows = [e for e in entries if e["request_id"] == headers["x-request-id"]]
    assert len(rows) == 1, rows
    assert (rows[0]["tenant"], rows[0]["status"], rows[0]["completion_tokens"]) == ("audit-stream", 200, 4)
