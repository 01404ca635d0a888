"""Documents, retrieval and RAG answers over HTTP, and the wall between tenants."""

from __future__ import annotations

import aiohttp
import pytest

from tests.server.conftest import make_tenant
from tests.server.helpers import ADMIN_KEY, assert_openai_error, auth, post_json, sse_events

LIGHTHOUSE = (
    "Varnholm Lighthouse\n\n"
    "The Varnholm lighthouse was built in 1887 by the engineer Ada Kessel. It stands 42 metres tall on "
    "the northern cliff of the island of Varnholm and its lamp can be seen 30 kilometres out at sea.\n\n"
    "The keeper's cottage beside the tower is now a small museum about shipwrecks on the Varnholm reef."
)
BAKERY = (
    "Brindle Street Bakery\n\n"
    "The Brindle Street Bakery opened in 1952 and is famous for its rye bread with caraway seeds. Its "
    "founder, Tomas Orel, baked every loaf himself for the first ten years.\n\n"
    "Today the bakery sells about four hundred loaves each morning before nine o'clock."
)
QUESTION = "Who built the Varnholm lighthouse?"


async def _upload(url: str, key: str, collection: str, files: dict[str, str]) -> tuple[int, dict]:
    form = aiohttp.FormData()
    for name, text in files.items():
        form.add_field("file", text.encode(), filename=name, content_type="text/plain")
    async with aiohttp.ClientSession() as s, s.post(f"{url}/v1/collections/{collection}/documents",
                                                    data=form, headers=auth(key)) as r:
        return r.status, await r.json()


async def _call(method: str, url: str, key: str, body: dict | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        if body is not None:
            status, payload, _ = await post_json(s, url, body, key)
            return status, payload
        async with s.request(method, url, headers=auth(key)) as r:
            return r.status, await r.json()


@pytest.fixture(scope="module")
def alice(server, run) -> dict:
    key = make_tenant(server, "alice")
    status, body = run(_upload(server.url, key, "kb", {"notes/lighthouse.txt": LIGHTHOUSE,
                                                       "notes/bakery.md": BAKERY}))
    assert status == 200, body
    assert [r["status"] for r in body["results"]] == ["added", "added"]
    assert all(r["chunks"] >= 1 and r["error"] is None for r in body["results"])
    return {"key": key, "docs": {r["source"]: r["doc_id"] for r in body["results"]}}


@pytest.fixture(scope="module")
def bob(server) -> str:
    return make_tenant(server, "bob")


def test_documents_listing_and_idempotent_upload(server, run, alice):
    status, listing = run(_call("GET", f"{server.url}/v1/collections/kb/documents", alice["key"]))
    assert status == 200
    assert {d["source"]: d["doc_id"] for d in listing["documents"]} == alice["docs"]
    status, again = run(_upload(server.url, alice["key"], "kb", {"notes/lighthouse.txt": LIGHTHOUSE,
                                                                 "notes/blob.bin": "\x00\x01"}))
    assert status == 200
    assert [r["status"] for r in again["results"]] == ["skipped", "failed"]
    assert again["results"][1]["error"]
    status, collections = run(_call("GET", f"{server.url}/v1/collections", alice["key"]))
    assert [c["name"] for c in collections["collections"]] == ["kb"]


def test_retrieve_finds_the_right_document(server, run, alice):
    status, body = run(_call("POST", f"{server.url}/v1/rag/retrieve", alice["key"],
                             {"query": QUESTION, "collection": "kb", "top_k": 2}))
    assert status == 200
    results = body["results"]
    assert 1 <= len(results) <= 2
    assert set(results[0]) == {"id", "doc_id", "source", "chunk_index", "text", "score"}
    assert results[0]["doc_id"] == alice["docs"]["notes/lighthouse.txt"]
    assert "Ada Kessel" in results[0]["text"]


def test_rag_query_answers_with_sources(server, run, alice):
    body = {"query": QUESTION, "collection": "kb", "top_k": 1, "max_tokens": 12}
    status, first = run(_call("POST", f"{server.url}/v1/rag/query", alice["key"], body))
    assert status == 200, first
    assert first["object"] == "rag.answer" and first["answer"].strip()
    assert first["sources"][0]["label"] == "[1]"
    assert first["sources"][0]["doc_id"] == alice["docs"]["notes/lighthouse.txt"]
    assert first["usage"]["completion_tokens"] <= 12
    # The same question again reuses the KV of the whole retrieved context.
    status, second = run(_call("POST", f"{server.url}/v1/rag/query", alice["key"], body))
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > first["usage"]["prompt_tokens"] // 2


def test_rag_top_k_counts_chunks_and_does_not_limit_sampling(server, run, alice):
    """top_k of /v1/rag/query is the number of chunks; it once also became sampling's top-k, which
    made top_k=1 sample greedily at any temperature."""
    url = f"{server.url}/v1/rag/query"
    base = {"query": QUESTION, "collection": "kb", "top_k": 1, "max_tokens": 8, "ignore_eos": True}
    status, greedy = run(_call("POST", url, alice["key"], {**base, "temperature": 0.0}))
    assert status == 200, greedy
    answers = set()
    for seed in (1, 2):
        status, hot = run(_call("POST", url, alice["key"], {**base, "temperature": 50.0, "seed": seed}))
        assert status == 200 and len(hot["sources"]) == 1, hot
        answers.add(hot["answer"])
    assert greedy["answer"] not in answers and len(answers) == 2


def test_rag_query_streams_deltas_then_sources_and_usage(server, run, alice):
    async def go():
        body = {"query": QUESTION, "collection": "kb", "top_k": 1, "max_tokens": 6, "stream": True}
        async with aiohttp.ClientSession() as s, s.post(f"{server.url}/v1/rag/query", json=body,
                                                        headers=auth(alice["key"])) as r:
            return r.status, await r.text()

    status, raw = run(go())
    assert status == 200
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    deltas, last = events[:-2], events[-2]
    assert deltas and all(e["object"] == "rag.answer.chunk" and "sources" not in e for e in deltas)
    assert len({e["id"] for e in events[:-1]}) == 1
    assert last["sources"][0]["doc_id"] == alice["docs"]["notes/lighthouse.txt"]
    assert last["usage"]["completion_tokens"] >= 1 and last["finish_reason"] in ("stop", "length")


def test_another_tenant_cannot_see_the_collection(server, run, alice, bob):
    url = server.url
    status, payload = run(_call("GET", f"{url}/v1/collections/kb/documents", bob))
    assert assert_openai_error(status, payload, 404)["code"] == "collection_not_found"
    for path in ("/v1/rag/retrieve", "/v1/rag/query"):
        status, payload = run(_call("POST", url + path, bob, {"query": QUESTION, "collection": "kb"}))
        assert_openai_error(status, payload, 404)
    lighthouse_id = alice["docs"]["notes/lighthouse.txt"]
    status, payload = run(_call("DELETE", f"{url}/v1/collections/kb/documents/{lighthouse_id}", bob))
    assert_openai_error(status, payload, 404)
    assert run(_call("GET", f"{url}/v1/collections", bob))[1] == {"collections": []}
    # Bob's own "kb" is a different collection: his retrieval never returns Alice's chunks.
    status, _ = run(_upload(url, bob, "kb", {"bread.txt": BAKERY}))
    assert status == 200
    status, body = run(_call("POST", f"{url}/v1/rag/retrieve", bob, {"query": QUESTION, "collection": "kb"}))
    assert status == 200 and body["results"]
    assert not {r["doc_id"] for r in body["results"]} & set(alice["docs"].values())
    assert all("Kessel" not in r["text"] for r in body["results"])
    status, listing = run(_call("GET", f"{url}/v1/collections/kb/documents", alice["key"]))
    assert {d["doc_id"] for d in listing["documents"]} == set(alice["docs"].values())


def test_prefix_cache_is_not_shared_across_tenants(server, run, alice, bob):
    messages = [{"role": "system", "content": "Facts: " + LIGHTHOUSE}, {"role": "user", "content": QUESTION}]
    body = {"model": server.model, "messages": messages, "max_tokens": 1}
    url = f"{server.url}/v1/chat/completions"
    run(_call("POST", url, alice["key"], body))
    status, again = run(_call("POST", url, alice["key"], body))
    assert status == 200 and again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    status, other = run(_call("POST", url, bob, body))
    assert status == 200 and other["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_delete_document(server, run, alice):
    doc_id = alice["docs"]["notes/bakery.md"]
    url = f"{server.url}/v1/collections/kb/documents"
    assert run(_call("DELETE", f"{url}/{doc_id}", alice["key"])) == (200, {"deleted": True, "doc_id": doc_id})
    status, payload = run(_call("DELETE", f"{url}/{doc_id}", alice["key"]))
    assert_openai_error(status, payload, 404)
    status, listing = run(_call("GET", url, alice["key"]))
    assert [d["doc_id"] for d in listing["documents"]] == [alice["docs"]["notes/lighthouse.txt"]]


HARBOUR = (
    "Varnholm Harbour\n\n"
    "The harbour of Varnholm was dug in 1902. Fishing boats land herring there from May to September, "
    "and a ferry leaves for the mainland twice a day."
)


def test_chunk_kv_reuse_over_http(server, run):
    """Two questions whose retrievals share chunks at different prompt positions: with kv_reuse
    "chunks" the second takes their stored KV (the chunk cache counts it); a bad mode is a 400."""
    key = make_tenant(server, "carol")
    status, body = run(_upload(server.url, key, "kb", {"m/lighthouse.txt": LIGHTHOUSE,
                                                       "m/bakery.md": BAKERY}))
    assert status == 200, body
    query = {"query": QUESTION, "collection": "kb", "max_tokens": 8, "kv_reuse": "chunks"}
    status, first = run(_call("POST", f"{server.url}/v1/rag/query", key, {**query, "top_k": 2}))
    assert status == 200, first
    before = run(_call("GET", f"{server.url}/admin/stats", ADMIN_KEY))[1]["chunk_cache"]
    status, body = run(_upload(server.url, key, "kb", {"a/harbour.txt": HARBOUR}))  # sorts first
    assert status == 200, body
    status, second = run(_call("POST", f"{server.url}/v1/rag/query", key, {**query, "top_k": 3}))
    assert status == 200, second
    assert second["sources"][0]["source"] == "a/harbour.txt"  # the others moved down
    after = run(_call("GET", f"{server.url}/admin/stats", ADMIN_KEY))[1]["chunk_cache"]
    assert after["hit_tokens"] > before["hit_tokens"] and after["blocks"] > 0
    assert after["query_tokens"] > after["hit_tokens"] + after["prefix_hit_tokens"]  # the first computed them
    assert 0 < after["served_perc"] < 1
    assert second["answer"]
    status, err = run(_call("POST", f"{server.url}/v1/rag/query", key, {**query, "kv_reuse": "all"}))
    assert assert_openai_error(status, err, 400)["param"] == "kv_reuse"


def test_precomputed_chunks_serve_the_first_query(server, run):
    """After /admin/chunks/precompute, a cold query with kv_reuse "chunks" already takes stored chunk
    KV; a collection that does not exist is a 404, another tenant's chunks are not shared."""
    key = make_tenant(server, "dave")
    status, body = run(_upload(server.url, key, "kb", {"m/lighthouse.txt": LIGHTHOUSE,
                                                       "m/bakery.md": BAKERY, "a/harbour.txt": HARBOUR}))
    assert status == 200, body
    status, done = run(_call("POST", f"{server.url}/admin/chunks/precompute", ADMIN_KEY,
                             {"tenant": "dave", "collection": "kb"}))
    assert status == 200, done
    assert done["chunks"] >= 3 and done["resident_chunks"] == done["chunks"] and done["failed_chunks"] == 0
    before = run(_call("GET", f"{server.url}/admin/stats", ADMIN_KEY))[1]["chunk_cache"]["hit_tokens"]
    query = {"query": QUESTION, "collection": "kb", "top_k": 3, "max_tokens": 8, "kv_reuse": "chunks"}
    status, answer = run(_call("POST", f"{server.url}/v1/rag/query", key, query))
    assert status == 200 and answer["answer"], answer
    after = run(_call("GET", f"{server.url}/admin/stats", ADMIN_KEY))[1]["chunk_cache"]["hit_tokens"]
    assert after > before
    other = make_tenant(server, "erin")
    status, body = run(_upload(server.url, other, "kb", {"m/lighthouse.txt": LIGHTHOUSE,
                                                         "m/bakery.md": BAKERY, "a/harbour.txt": HARBOUR}))
    assert status == 200, body
    status, answer = run(_call("POST", f"{server.url}/v1/rag/query", other,
                               {**query, "query": "Who founded the bakery?"}))
    assert status == 200
    assert run(_call("GET", f"{server.url}/admin/stats", ADMIN_KEY))[1]["chunk_cache"]["hit_tokens"] == after
    status, err = run(_call("POST", f"{server.url}/admin/chunks/precompute", ADMIN_KEY,
                            {"tenant": "dave", "collection": "nope"}))
    assert assert_openai_error(status, err, 404)["param"] == "collection"


def test_a_cold_system_prompt_is_computed_while_retrieval_runs(server, run, alice):
    """After a flush nothing is cached, yet the query finds the operator's system prompt cached: a
    warm-up request computed it while the question was embedded and searched (before, the first
    query after a flush computed its whole prompt). Once cached, no warm-up request is made."""
    stats = lambda: server.get_json("/admin/stats")  # noqa: E731
    assert run(_call("POST", f"{server.url}/admin/cache/flush", ADMIN_KEY, {}))[0] == 200
    before = stats()["requests"]["finished"].get("length", 0)
    body = {"query": QUESTION, "collection": "kb", "top_k": 1, "max_tokens": 2, "ignore_eos": True}
    status, answer = run(_call("POST", f"{server.url}/v1/rag/query", alice["key"], body))
    assert status == 200, answer
    cached = answer["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= 32 and cached % 16 == 0, answer["usage"]  # whole blocks of the system prompt
    after = stats()["requests"]["finished"].get("length", 0)
    assert after - before == 2  # the query and its warm-up
    status, _ = run(_call("POST", f"{server.url}/v1/rag/query", alice["key"], {**body, "top_k": 2}))
    assert status == 200 and stats()["requests"]["finished"].get("length", 0) - after == 1
