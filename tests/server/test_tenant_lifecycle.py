"""A tenant's limits and weight, and its deletion: everything of it goes, nothing of anyone else.

Its own server (real model, Qdrant Edge, SQLite), because the last test stops it to look into the
vector store and the control database directly, and to delete a tenant from the CLI with no server.
Two tenants hold documents (one collection name in common), keys and usage, and the one to be
deleted has KV blocks in the prefix cache and a stream in flight when the DELETE arrives.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3

import aiohttp
import pytest

from tests.server.helpers import ADMIN_KEY, ServerProcess, assert_openai_error, auth, served

GONE, KEPT = "erase-me", "keep-me"
# About 150 tokens: nine full KV blocks of 16 that stay cached after the request ends.
LONG_PROMPT = ("The appliance keeps the KV cache of every full block of a prompt so that the next "
               "request with the same prefix skips its prefill. ") * 6
LIGHTHOUSE = ("Varnholm Lighthouse\n\nThe Varnholm lighthouse was built in 1887 by the engineer Ada Kessel. "
              "It stands 42 metres tall on the northern cliff of the island of Varnholm.\n")
BAKERY = ("Brindle Street Bakery\n\nThe Brindle Street Bakery opened in 1952 and is famous for its rye "
          "bread with caraway seeds.\n")
ORCHARD = "Quell Orchard\n\nThe Quell orchard grows forty kinds of pear on the slopes above Lake Orm.\n"
STREAM_TOKENS = 400


async def _request(url: str, method: str, path: str, body: dict | None = None,
                   key: str = ADMIN_KEY) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.request(method, url + path, json=body, headers=auth(key)) as r:
        return r.status, await r.json(content_type=None)


def call(server: ServerProcess, method: str, path: str, body: dict | None = None,
         key: str = ADMIN_KEY) -> tuple[int, dict]:
    return asyncio.run(_request(server.url, method, path, body, key))


def ok(server: ServerProcess, method: str, path: str, body: dict | None = None, key: str = ADMIN_KEY) -> dict:
    status, payload = call(server, method, path, body, key)
    assert status in (200, 201), (method, path, status, payload)
    return payload


async def _upload(url: str, key: str, collection: str, files: dict[str, str]) -> dict:
    form = aiohttp.FormData()
    for name, text in files.items():
        form.add_field("file", text.encode(), filename=name, content_type="text/plain")
    async with aiohttp.ClientSession() as s, s.post(f"{url}/v1/collections/{collection}/documents",
                                                    data=form, headers=auth(key)) as r:
        body = await r.json()
        assert r.status == 200 and all(x["status"] == "added" for x in body["results"]), body
        return body


def new_tenant(server: ServerProcess, name: str, num_keys: int = 1, **fields) -> list[str]:
    ok(server, "POST", "/admin/tenants", {"name": name, **fields})
    return [ok(server, "POST", "/admin/keys", {"tenant": name})["key"] for _ in range(num_keys)]


def complete(server: ServerProcess, key: str, prompt: str = LONG_PROMPT) -> dict:
    body = {"model": server.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0}
    return ok(server, "POST", "/v1/completions", body, key)


def _listed(server: ServerProcess) -> dict[str, dict]:
    return {t["name"]: t for t in ok(server, "GET", "/admin/tenants")["tenants"]}


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    """The real CLI entry point in-process (no interpreter start-up per call)."""
    from appliance.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def appliance(tmp_path_factory) -> ServerProcess:
    with served(ServerProcess(tmp_path_factory.mktemp("lifecycle") / "data"), check_exit=False) as proc:
        yield proc


@pytest.fixture(scope="module")
def tenants(appliance) -> dict:
    """GONE: two keys, three documents in two collections, cached KV; KEPT: one key, one document."""
    gone_keys = new_tenant(appliance, GONE, 2, weight=2.0)
    kept_key = new_tenant(appliance, KEPT)[0]
    asyncio.run(_upload(appliance.url, gone_keys[0], "kb",
                        {"lighthouse.txt": LIGHTHOUSE, "bakery.md": BAKERY}))
    asyncio.run(_upload(appliance.url, gone_keys[1], "notes", {"orchard.txt": ORCHARD}))
    asyncio.run(_upload(appliance.url, kept_key, "kb", {"lighthouse.txt": LIGHTHOUSE}))
    complete(appliance, gone_keys[0])
    again = complete(appliance, gone_keys[1])
    # The premise of the KV check below: the tenant's prompt is a prefix-cache hit before deletion.
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] >= 128, again["usage"]
    complete(appliance, kept_key, "Hello")
    kept_docs = ok(appliance, "GET", "/v1/collections/kb/documents", key=kept_key)["documents"]
    return {"gone_keys": gone_keys, "kept_key": kept_key, "kept_docs": kept_docs}


async def _delete_during_stream(server: ServerProcess, key: str) -> tuple[int, dict, str]:
    """DELETE the tenant once its long stream has produced its first bytes; (status, body, stream)."""
    body = {"model": server.model, "prompt": "Count to a thousand:", "max_tokens": STREAM_TOKENS,
            "ignore_eos": True, "temperature": 0.0, "stream": True}
    async with aiohttp.ClientSession() as s, s.post(server.url + "/v1/completions", json=body,
                                                    headers=auth(key)) as r:
        assert r.status == 200, await r.text()
        first = await r.content.readline()
        status, erased = await _request(server.url, "DELETE", f"/admin/tenants/{GONE}")
        rest = await asyncio.wait_for(r.content.read(), 120)
    return status, erased, (first + rest).decode()


@pytest.fixture(scope="module")
def deletion(appliance, tenants) -> dict:
    status, body, stream = asyncio.run(_delete_during_stream(appliance, tenants["gone_keys"][0]))
    assert status == 200, body
    return {"body": body, "stream": stream}


def test_an_old_database_gains_the_new_tenant_columns(tmp_path):
    from appliance.server.store import ControlStore

    with sqlite3.connect(tmp_path / "control.db") as db:  # the schema before limits and weights
        db.execute("CREATE TABLE tenants (name TEXT PRIMARY KEY, token_quota_per_day INTEGER,"
                   " requests_per_minute INTEGER, created_at TEXT)")
        db.execute("INSERT INTO tenants VALUES ('old', 10, NULL, '2025-01-01T00:00:00+00:00')")
    store = ControlStore.open(tmp_path)
    try:
        old = store.get_tenant("old")
        assert (old.token_quota_per_day, old.max_concurrent_requests, old.max_queued_tokens, old.weight) == (
            10, None, None, 1.0)
        assert store.update_tenant("old", weight=3, max_concurrent_requests=2).weight == 3.0
    finally:
        store.close()


def test_usage_of_a_tenant_that_is_gone_is_not_recorded(tmp_path):
    """A request that ends after its tenant was deleted must not bring back a usage row."""
    from appliance.server.store import AuditEntry, ControlStore

    store = ControlStore.open(tmp_path)
    try:
        store.create_tenant("late")
        store.delete_tenant("late")
        store.record(AuditEntry("late", "k", "POST", "/v1/completions", 200, "r1", 5.0, 7, 0, 3), True)
        assert store.usage_by_tenant() == {}
        assert [r["request_id"] for r in store.audit_rows()] == ["r1", ""]  # the audit row is kept
    finally:
        store.close()


def test_cli_create_set_list(tmp_path, capsys):
    data = ["--data-dir", str(tmp_path)]
    code, out, _ = cli(["tenants", "create", "acme", "--weight", "2", "--max-concurrent", "4", *data], capsys)
    assert code == 0 and "concurrent: 4" in out and "weight: 2" in out, out
    code, out, _ = cli(["tenants", "set", "acme", "--max-concurrent", "default", "--max-queued-tokens", "900",
                        "--token-quota", "5000", *data], capsys)
    assert code == 0 and "concurrent: default" in out and "queued tokens: 900" in out, out
    code, out, _ = cli(["tenants", "list", *data], capsys)
    row = out.splitlines()[1].split()[:6]
    assert code == 0 and row == ["acme", "5000", "unlimited", "default", "900", "2"], out
    for argv, expected in [(["set", "acme", "--weight", "0"], "weight must be a number from"),
                           (["set", "acme", "--weight", "x"], "--weight must be a number"),
                           (["set", "acme", "--max-concurrent", "0"], "max_concurrent_requests must be"),
                           (["set", "acme", "--rpm", "many"], "--rpm must be an integer"),
                           (["set", "acme"], "nothing to change"),
                           (["set", "ghost", "--weight", "1"], "tenant 'ghost' does not exist"),
                           (["create", "acme"], "already exists"),
                           (["delete", "ghost", "--yes"], "tenant 'ghost' does not exist"),
                           (["delete", "admin", "--yes"], "admin tenant cannot be deleted")]:
        code, out, err = cli(["tenants", *argv, *data], capsys)
        assert code == 1 and out == "" and err.count("\n") == 1 and expected in err, (argv, err)


def test_limits_and_weight_are_set_and_bad_values_refused(appliance):
    new_tenant(appliance, "limits", weight=0.5, max_concurrent_requests=3)
    tenant = ok(appliance, "PATCH", "/admin/tenants/limits", {"max_queued_tokens": 4096.0, "weight": 4,
                                                               "max_concurrent_requests": None})
    shown = (tenant["weight"], tenant["max_queued_tokens"], tenant["max_concurrent_requests"])
    assert shown == (4.0, 4096, None), tenant
    assert _listed(appliance)["limits"] == tenant
    bad = [({"weight": 0}, "weight"), ({"weight": -1}, "weight"), ({"weight": "heavy"}, "weight"),
           ({"weight": 1e9}, "weight"), ({"weight": True}, "weight"), ({"weight": None}, "weight"),
           ({"max_concurrent_requests": 0}, "max_concurrent_requests"),
           ({"max_queued_tokens": 1.5}, "max_queued_tokens"),
           ({"token_quota_per_day": -5}, "token_quota_per_day"),
           ({"requests_per_minute": 2**70}, "requests_per_minute"), ({"name": "renamed"}, "name"), ({}, None)]
    for body, param in bad:
        status, payload = call(appliance, "PATCH", "/admin/tenants/limits", body)
        assert assert_openai_error(status, payload, 400)["param"] == param, (body, payload)
    status, payload = call(appliance, "POST", "/admin/tenants", {"name": "nan-weight", "weight": -2})
    assert assert_openai_error(status, payload, 400)["param"] == "weight"
    assert _listed(appliance)["limits"] == tenant  # nothing of the refused changes stuck
    for method, path, body, expected in [("PATCH", "/admin/tenants/ghost", {"weight": 2}, 404),
                                         ("DELETE", "/admin/tenants/ghost", None, 404),
                                         ("DELETE", "/admin/tenants/admin", None, 400)]:
        status, payload = call(appliance, method, path, body)
        assert_openai_error(status, payload, expected)
    assert appliance.health() == 200


def test_delete_erases_the_tenant_and_nothing_else(appliance, tenants, deletion):
    erased = deletion["body"]["erased"]
    assert erased["keys"] == 2 and erased["requests_aborted"] == 1, erased
    assert erased["collections"] == 2 and erased["documents"] == 3 and erased["chunks"] >= 3, erased
    assert erased["kv_blocks"] >= 9 and erased["usage_rows"] == 1, erased
    assert deletion["stream"].count('"text"') < STREAM_TOKENS, "the tenant's stream was not aborted"
    for key in tenants["gone_keys"]:
        status, payload = call(appliance, "GET", "/v1/models", key=key)
        assert_openai_error(status, payload, 401)
    names = {t["name"] for t in ok(appliance, "GET", "/admin/tenants")["tenants"]}
    assert GONE not in names and KEPT in names
    usage = ok(appliance, "GET", "/admin/stats")["tenants"]
    assert GONE not in usage and usage[KEPT]["requests"] >= 1, usage
    kept_key = tenants["kept_key"]
    docs = ok(appliance, "GET", "/v1/collections/kb/documents", key=kept_key)["documents"]
    assert docs == tenants["kept_docs"]
    query = {"query": "Who built the lighthouse?", "collection": "kb"}
    hits = ok(appliance, "POST", "/v1/rag/retrieve", query, key=kept_key)["results"]
    assert hits and "Ada Kessel" in hits[0]["text"]
    rows = [r for r in ok(appliance, "GET", "/admin/audit?limit=1000")["entries"] if r["detail"]]
    assert [(r["tenant"], r["method"], json.loads(r["detail"])) for r in rows] == [(GONE, "ERASE", erased)]


def test_a_tenant_made_again_with_the_name_starts_empty(appliance, deletion):
    key = new_tenant(appliance, GONE)[0]
    first = complete(appliance, key)
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0, first["usage"]
    assert ok(appliance, "GET", "/v1/collections", key=key)["collections"] == []
    assert ok(appliance, "GET", "/admin/stats")["tenants"][GONE]["requests"] == 1
    ok(appliance, "DELETE", f"/admin/tenants/{GONE}")


def test_cli_delete_goes_through_a_running_server(appliance, tenants, capsys):
    data_dir = str(appliance.data_dir)
    code, out, err = cli(["tenants", "delete", KEPT, "--yes", "--data-dir", data_dir], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1 and "--url" in err, err
    assert ok(appliance, "GET", "/v1/models", key=tenants["kept_key"])  # refused: nothing was touched
    assert cli(["tenants", "delete", KEPT, "--data-dir", data_dir], capsys)[0] == 1  # no --yes, no tty
    key = new_tenant(appliance, "via-url")[0]
    code, out, err = cli(["tenants", "delete", "via-url", "--yes", "--url", appliance.url,
                          "--api-key", ADMIN_KEY], capsys)
    assert code == 0 and out.startswith("deleted tenant via-url; erased:") and "keys 1" in out, (out, err)
    assert call(appliance, "GET", "/v1/models", key=key)[0] == 401
    code, out, err = cli(["tenants", "delete", "admin", "--yes", "--url", appliance.url,
                          "--api-key", ADMIN_KEY], capsys)
    assert code == 1 and "admin tenant cannot be deleted" in err and err.count("\n") == 1


def test_store_keeps_nothing_of_it_and_the_cli_erases_offline(appliance, tenants, deletion, capsys):
    from appliance.server.store import ControlStore
    from rag import RagService
    from rag.types import Scope

    assert appliance.stop() == 0, appliance.log()
    data_dir = appliance.data_dir
    rag = RagService(data_dir)
    embedder = rag.embedder
    try:
        assert rag.list_collections(GONE) == []
        assert [rag.store.count(Scope(GONE, c)) for c in ("kb", "notes")] == [0, 0]
        assert rag.store.count(Scope(KEPT, "kb")) == tenants["kept_docs"][0]["chunks"] > 0
    finally:
        rag.close()
    with sqlite3.connect(data_dir / "rag" / "catalog.db") as db:
        assert db.execute("SELECT count(*) FROM documents WHERE tenant = ?", [GONE]).fetchone()[0] == 0
    code, out, err = cli(["tenants", "delete", KEPT, "--yes", "--data-dir", str(data_dir)], capsys)
    assert code == 0 and "documents 1" in out and "keys 1" in out, (out, err)
    rag = RagService(data_dir, embedder=embedder)
    try:
        assert rag.list_collections(KEPT) == [] and rag.store.count(Scope(KEPT, "kb")) == 0
    finally:
        rag.close()
    store = ControlStore.open(data_dir)
    try:
        assert store.get_tenant(KEPT) is None and store.list_keys(KEPT) == []
        erasures = [(r["tenant"], json.loads(r["detail"])) for r in store.audit_rows(1000) if r["detail"]]
        assert [t for t, _ in erasures] == [KEPT, "via-url", GONE, GONE]
        assert erasures[0][1]["keys"] == 1 and erasures[0][1]["usage_rows"] == 1
    finally:
        store.close()
