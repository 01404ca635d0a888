"""Keys, tenants, quotas, rate limits, audit, admin endpoints and metrics against the real server."""

from __future__ import annotations

import sqlite3
import subprocess

import aiohttp
from multidict import CIMultiDict

from tests.server.conftest import admin_post, make_tenant
from tests.server.helpers import ADMIN_KEY, appliance_bin, assert_openai_error, auth, post_json


def _db_bytes(server) -> bytes:
    data = b""
    for suffix in ("", "-wal"):
        path = server.data_dir / f"control.db{suffix}"
        if path.exists():
            data += path.read_bytes()
    return data


async def _get(url: str, key: str | None) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=auth(key) if key else {}) as r:
        return r.status, await r.json(content_type=None), CIMultiDict(r.headers)


def _completion(server, key: str, max_tokens: int = 2, prompt: str = "Hello") -> tuple[int, dict, dict]:
    async def go():
        async with aiohttp.ClientSession() as s:
            return await post_json(s, server.url + "/v1/completions",
                                   {"model": server.model, "prompt": prompt, "max_tokens": max_tokens}, key)
    import asyncio

    return asyncio.run(go())


def test_no_plaintext_key_at_rest_and_revocation(server, run):
    created = admin_post(server, "/admin/tenants", {"name": "keys-at-rest"})
    assert created["name"] == "keys-at-rest"
    made = admin_post(server, "/admin/keys", {"tenant": "keys-at-rest"})
    key, key_id = made["key"], made["id"]
    assert run(_get(server.url + "/v1/models", key))[0] == 200
    raw = _db_bytes(server)
    secret = key.split("_", 2)[2]
    assert key.encode() not in raw and secret.encode() not in raw
    assert ADMIN_KEY.encode() not in raw
    listed = run(_get(server.url + "/admin/keys?tenant=keys-at-rest", ADMIN_KEY))[1]["keys"]
    assert [k["id"] for k in listed] == [key_id] and "key" not in listed[0] and "key_hash" not in listed[0]

    async def revoke():
        async with aiohttp.ClientSession() as s, s.delete(f"{server.url}/admin/keys/{key_id}",
                                                          headers=auth(ADMIN_KEY)) as r:
            return r.status, await r.json()

    assert run(revoke()) == (200, {"revoked": True, "id": key_id})
    status, payload, headers = run(_get(server.url + "/v1/models", key))
    assert assert_openai_error(status, payload, 401)["code"] == "invalid_api_key"
    assert headers.get("WWW-Authenticate") == "Bearer"


def test_daily_token_quota_gives_429_without_retry(server):
    key = make_tenant(server, "quota-tenant", token_quota_per_day=1)
    status, body, _ = _completion(server, key)
    assert status == 200 and body["usage"]["total_tokens"] >= 1
    status, payload, headers = _completion(server, key)
    err = assert_openai_error(status, payload, 429)
    assert err["code"] == "insufficient_quota" and err["type"] == "rate_limit_error"
    assert int(headers["Retry-After"]) > 0 and headers["x-should-retry"] == "false"


def test_requests_per_minute_limit(server, run):
    key = make_tenant(server, "rpm-tenant", requests_per_minute=2)
    statuses = [run(_get(server.url + "/v1/models", key)) for _ in range(3)]
    assert [s[0] for s in statuses] == [200, 200, 429]
    _, payload, headers = statuses[-1]
    assert payload["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(headers["Retry-After"]) <= 60 and headers["x-should-retry"] == "true"


def test_tenant_keys_cannot_use_admin_endpoints(server, run):
    key = make_tenant(server, "not-an-admin")
    for path in ("/admin/stats", "/admin/tenants", "/admin/keys"):
        status, payload, _ = run(_get(server.url + path, key))
        assert assert_openai_error(status, payload, 403)["code"] == "admin_required"

    async def create_tenant():
        async with aiohttp.ClientSession() as s:
            return await post_json(s, server.url + "/admin/tenants", {"name": "sneaky"}, key)

    status, payload, _ = run(create_tenant())
    assert_openai_error(status, payload, 403)
    assert "sneaky" not in [t["name"] for t in server.get_json("/admin/tenants")["tenants"]]


def test_usage_accounting_and_audit_log(server):
    key = make_tenant(server, "audited")
    status, body, headers = _completion(server, key, prompt="Audit this secret prompt text")
    assert status == 200
    request_id = headers["x-request-id"]
    usage = server.get_json("/admin/stats")["tenants"]["audited"]
    assert usage["requests"] == 1
    assert usage["prompt_tokens"] == body["usage"]["prompt_tokens"]
    assert usage["completion_tokens"] == body["usage"]["completion_tokens"]
    with sqlite3.connect(f"file:{server.data_dir / 'control.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT tenant, key_id, route, status, prompt_tokens, completion_tokens, prompt "
                          "FROM audit WHERE request_id = ?", [request_id]).fetchall()
    key_id = key.split("_")[1]
    assert rows == [("audited", key_id, "/v1/completions", 200, body["usage"]["prompt_tokens"],
                     body["usage"]["completion_tokens"], None)]
    assert b"Audit this secret prompt text" not in _db_bytes(server)


def _cli(args: list[str], capsys) -> tuple[int, str]:
    """The real CLI entry point in-process (saves the interpreter start-up per call)."""
    from appliance.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    return code, capsys.readouterr().out


def test_cli_keys_work_against_the_running_server(server, run, capsys):
    data_dir = str(server.data_dir)
    assert _cli(["tenants", "create", "cli-tenant", "--rpm", "100", "--data-dir", data_dir], capsys)[0] == 0
    # The contract: the new key alone on the last line of stdout (checked on a real process).
    create = [appliance_bin(), "keys", "create", "--tenant", "cli-tenant", "--data-dir", data_dir]
    out = subprocess.run(create, check=True, capture_output=True, text=True).stdout
    key = out.strip().splitlines()[-1]
    assert key.startswith("apk_") and " " not in key
    assert run(_get(server.url + "/v1/models", key))[0] == 200
    code, listing = _cli(["keys", "list", "--data-dir", data_dir], capsys)
    assert code == 0 and key.split("_")[1] in listing and key not in listing
    code, tenants = _cli(["tenants", "list", "--data-dir", data_dir], capsys)
    assert code == 0 and "cli-tenant" in tenants
    assert _cli(["keys", "revoke", key.split("_")[1], "--data-dir", data_dir], capsys)[0] == 0
    assert run(_get(server.url + "/v1/models", key))[0] == 401
    bad = subprocess.run([appliance_bin(), "keys", "create", "--tenant", "ghost", "--data-dir", data_dir],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stdout == ""
    assert bad.stderr.strip().count("\n") == 0 and "ghost" in bad.stderr and "Traceback" not in bad.stderr


def test_pause_and_resume_admission(server, run):
    key = make_tenant(server, "paused-tenant")
    paused = admin_post(server, "/admin/admission/pause", {})
    assert paused["paused"] is True
    try:
        status, payload, headers = _completion(server, key)
        assert assert_openai_error(status, payload, 503)["code"] == "admission_paused"
        assert int(headers["Retry-After"]) > 0
        assert server.health() == 200  # paused is healthy: operators pause, load balancers keep it
    finally:
        assert admin_post(server, "/admin/admission/resume", {})["paused"] is False
    assert _completion(server, key)[0] == 200


def test_stats_shape_and_cache_flush(server):
    stats = server.get_json("/admin/stats")
    kv = stats["kv"]
    assert set(kv) >= {"block_size", "num_blocks", "used_blocks", "cached_blocks", "free_blocks",
                       "usage_perc"}
    assert kv["used_blocks"] + kv["cached_blocks"] + kv["free_blocks"] == kv["num_blocks"]
    assert set(stats["prefix_cache"]) == {"query_tokens", "hit_tokens", "hit_rate"}
    assert set(stats["requests"]) >= {"running", "waiting", "preemptions_total"}
    assert set(stats["throughput"]) >= {"prompt_tokens_per_s", "generation_tokens_per_s"}
    assert set(stats["latency"]) >= {"ttft_s", "tpot_s", "e2e_s", "queue_s"}
    assert stats["status"] == "ready"
    flushed = admin_post(server, "/admin/cache/flush", {})
    assert isinstance(flushed["flushed_blocks"], int)
    assert server.get_json("/admin/stats")["kv"]["cached_blocks"] == 0


METRIC_NAMES = [
    "num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prefix_cache_queries_total",
    "prefix_cache_hits_total", "num_preemptions_total", "prompt_tokens_total", "generation_tokens_total",
    "request_success_total", "time_to_first_token_seconds_bucket", "time_per_output_token_seconds_count",
    "e2e_request_latency_seconds_sum", "request_queue_time_seconds_bucket", "retrieval_latency_seconds_count",
]


def test_metrics_exposition(server, run):
    assert _completion(server, ADMIN_KEY)[0] == 200

    async def scrape():
        async with aiohttp.ClientSession() as s, s.get(server.url + "/metrics") as r:
            return r.status, r.headers["Content-Type"], await r.text()

    status, content_type, text = run(scrape())
    assert status == 200 and content_type.startswith("text/plain")
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"}
    missing = [n for n in METRIC_NAMES if f"appliance:{n}" not in names]
    assert not missing, missing
    assert "# TYPE appliance:ingest_documents_total counter" in text
    assert 'appliance:request_success_total{finished_reason="length"}' in text
    assert 'appliance:time_to_first_token_seconds_bucket{le="+Inf"}' in text
