"""A collection's default kv_reuse, against the real server: `GET/PATCH /v1/collections/{c}/settings`
round-trips per tenant and refuses bad values with 400s; /v1/rag/query takes its kv_reuse from the
request, else the collection, else the server (seen in /admin/stats' chunk-cache counters: only
"chunks" mode moves precomputed chunk KV in); `appliance ingest --url` sets the default and has the
server precompute the chunks' KV."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import pytest

from tests.rag.cli import appliance
from tests.server.conftest import admin_post, make_tenant
from tests.server.helpers import ADMIN_KEY, assert_openai_error, auth
from tests.server.test_rag import BAKERY, HARBOUR, LIGHTHOUSE, QUESTION, _call, _upload

DOCS = {"m/lighthouse.txt": LIGHTHOUSE, "m/bakery.md": BAKERY, "a/harbour.txt": HARBOUR}


async def _settings(url: str, key: str, collection: str, body: dict | str | None = None) -> tuple[int, dict]:
    """GET the collection's settings, or PATCH them with `body` (a string is sent as it is)."""
    endpoint = f"{url}/v1/collections/{collection}/settings"
    data = body if isinstance(body, str) else json.dumps(body)
    async with aiohttp.ClientSession() as s:
        request = s.get(endpoint, headers=auth(key)) if body is None else \
            s.patch(endpoint, data=data, headers=auth(key))
        async with request as r:
            return r.status, await r.json()


@pytest.fixture(scope="module")
def sam(server, run) -> str:
    key = make_tenant(server, "sam")
    status, body = run(_upload(server.url, key, "kb", DOCS))
    assert status == 200, body
    return key


def test_settings_round_trip_per_tenant(server, run, sam):
    assert run(_settings(server.url, sam, "kb")) == (
        200, {"collection": "kb", "kv_reuse": None, "effective_kv_reuse": "prefix"})
    chunks = {"collection": "kb", "kv_reuse": "chunks", "effective_kv_reuse": "chunks"}
    assert run(_settings(server.url, sam, "kb", {"kv_reuse": "chunks"})) == (200, chunks)
    assert run(_settings(server.url, sam, "kb")) == (200, chunks)

    tess = make_tenant(server, "tess")
    status, payload = run(_settings(server.url, tess, "kb"))
    assert assert_openai_error(status, payload, 404)["code"] == "collection_not_found"
    status, payload = run(_settings(server.url, tess, "kb", {"kv_reuse": "prefix"}))
    assert_openai_error(status, payload, 404)
    assert run(_upload(server.url, tess, "kb", {"bread.txt": BAKERY}))[0] == 200
    assert run(_settings(server.url, tess, "kb"))[1]["kv_reuse"] is None  # her own kb, not Sam's
    assert run(_settings(server.url, tess, "kb", {"kv_reuse": "prefix"}))[1]["kv_reuse"] == "prefix"
    assert run(_settings(server.url, sam, "kb")) == (200, chunks)

    assert run(_settings(server.url, sam, "kb", {"kv_reuse": None})) == (
        200, {"collection": "kb", "kv_reuse": None, "effective_kv_reuse": "prefix"})


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"kv_reuse": "all"}, "kv_reuse", "invalid_value"),
    ({"kv_reuse": ""}, "kv_reuse", "invalid_value"),
    ({"kv_reuse": 1}, "kv_reuse", "invalid_type"),
    ({}, None, "missing_required_parameter"),
    ({"kv_reuse": "chunks", "colour": "blue"}, "colour", "unknown_parameter"),
    ("not json", None, "invalid_json"),
    ("[]", None, "invalid_json"),
])
def test_bad_settings_are_400s(server, run, sam, body, param, code):
    before = run(_settings(server.url, sam, "kb"))
    status, payload = run(_settings(server.url, sam, "kb", body))
    err = assert_openai_error(status, payload, 400)
    assert (err["param"], err["code"]) == (param, code)
    assert run(_settings(server.url, sam, "kb")) == before


def test_bad_collection_names_are_400s(server, run, sam):
    for body in (None, {"kv_reuse": "chunks"}):
        status, payload = run(_settings(server.url, sam, "-kb", body))
        assert assert_openai_error(status, payload, 400)["param"] == "collection"


def test_erasing_a_tenant_erases_its_settings(server, run):
    key = make_tenant(server, "vic")
    assert run(_upload(server.url, key, "kb", {"bread.txt": BAKERY}))[0] == 200
    assert run(_settings(server.url, key, "kb", {"kv_reuse": "chunks"}))[0] == 200
    status, deleted = run(_call("DELETE", f"{server.url}/admin/tenants/vic", ADMIN_KEY))
    assert status == 200 and deleted["erased"]["collection_settings"] == 1, deleted
    key = make_tenant(server, "vic")
    assert run(_upload(server.url, key, "kb", {"bread.txt": BAKERY}))[0] == 200
    assert run(_settings(server.url, key, "kb"))[1]["kv_reuse"] is None


def _chunk_hit_tokens(server, run) -> int:
    return run(_call("GET", f"{server.url}/admin/stats", ADMIN_KEY))[1]["chunk_cache"]["hit_tokens"]


def test_query_takes_the_request_then_the_collection_then_the_server(server, run, sam):
    done = admin_post(server, "/admin/chunks/precompute", {"tenant": "sam", "collection": "kb"})
    assert done["resident_chunks"] == done["chunks"] >= 3, done

    def moved_chunk_kv(question: str, top_k: int, **fields) -> bool:
        before = _chunk_hit_tokens(server, run)
        query = {"query": question, "collection": "kb", "top_k": top_k, "max_tokens": 2, **fields}
        status, answer = run(_call("POST", f"{server.url}/v1/rag/query", sam, query))
        assert status == 200, answer
        return _chunk_hit_tokens(server, run) > before

    # "chunks" runs come first: a "prefix" run caches its prompt's blocks, which would then be
    # exact prefix hits for a later prompt with the same chunks and leave nothing to move.
    run(_settings(server.url, sam, "kb", {"kv_reuse": "chunks"}))
    assert moved_chunk_kv(QUESTION, 3)  # the collection's default
    run(_settings(server.url, sam, "kb", {"kv_reuse": "prefix"}))
    assert moved_chunk_kv("Who founded the bakery?", 1, kv_reuse="chunks")  # the request's field wins
    assert not moved_chunk_kv("How tall is the lighthouse?", 3)  # the collection's default again
    run(_settings(server.url, sam, "kb", {"kv_reuse": "chunks"}))
    assert not moved_chunk_kv("When was the harbour dug?", 3, kv_reuse="prefix")
    run(_settings(server.url, sam, "kb", {"kv_reuse": None}))
    assert not moved_chunk_kv("What does the bakery sell?", 3)  # the server's rag_kv_reuse: prefix
    status, err = run(_call("POST", f"{server.url}/v1/rag/query", sam,
                            {"query": QUESTION, "collection": "kb", "kv_reuse": "all"}))
    assert assert_openai_error(status, err, 400)["param"] == "kv_reuse"


def _corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "lighthouse.txt").write_text(LIGHTHOUSE)
    (corpus / "bakery.md").write_text(BAKERY)
    return corpus


PRECOMPUTED = re.compile(r"precomputed chunk KV of cli-kb: (\d+) chunks, (\d+) resident, 0 failed, "
                         r"(\d+) blocks pinned in \d+\.\ds")


def test_ingest_cli_sets_the_default_and_precomputes_the_chunks(server, run, tmp_path):
    result = appliance("ingest", str(_corpus(tmp_path)), "--url", server.url, "--api-key", ADMIN_KEY,
                       "--collection", "cli-kb", "--kv-reuse", "chunks", "--precompute-kv", "--pin-kv",
                       "--quiet")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("added 2, skipped 0 unchanged") and len(lines) == 3, lines
    assert lines[1] == "collection cli-kb: kv_reuse chunks by default"
    found = PRECOMPUTED.fullmatch(lines[2])
    assert found, lines[2]
    chunks, resident, pinned = map(int, found.groups())
    assert chunks >= 2 and resident == chunks and pinned > 0
    admin_post(server, "/admin/cache/unpin", {})
    assert run(_settings(server.url, ADMIN_KEY, "cli-kb"))[1]["kv_reuse"] == "chunks"


def test_ingest_cli_precompute_needs_an_admin_key(server, run, tmp_path):
    key = make_tenant(server, "uma")
    result = appliance("ingest", str(_corpus(tmp_path)), "--url", server.url, "--api-key", key,
                       "--collection", "cli-kb", "--kv-reuse", "chunks", "--precompute-kv", "--quiet")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == ("appliance: error: precomputing chunk KV needs an admin key (the appliance "
                         "answered 403 to this key)"), lines
    assert sum("error" in line for line in lines) == 1
    assert run(_settings(server.url, key, "cli-kb"))[1]["kv_reuse"] == "chunks"  # the rest was done
