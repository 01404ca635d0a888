"""A battery of bad requests: each gets its 4xx in the OpenAI error shape, and the server stays healthy."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.server.helpers import ADMIN_KEY, assert_openai_error, auth

M = "{model}"  # replaced by the served model's id


def chat(**extra) -> dict:
    return {"model": M, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}


def completion(**extra) -> dict:
    return {"model": M, "prompt": "hi", "max_tokens": 2, **extra}


CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
RETRIEVE, QUERY = "/v1/rag/retrieve", "/v1/rag/query"

# (name, method, path, body, headers-key, expected status, expected code or None)
CASES = [
    ("malformed json", "POST", CHAT, b"{not json", ADMIN_KEY, 400, "invalid_json"),
    ("empty body", "POST", CHAT, b"", ADMIN_KEY, 400, "invalid_json"),
    ("json array body", "POST", CHAT, b"[1, 2]", ADMIN_KEY, 400, "invalid_json"),
    ("NaN literal", "POST", CHAT, b'{"model": "x", "temperature": NaN}', ADMIN_KEY, 400, "invalid_json"),
    ("deeply nested json", "POST", CHAT, b"[" * 100000 + b"]" * 100000, ADMIN_KEY, 400, "invalid_json"),
    ("lone surrogate in chat", "POST", CHAT, chat(messages=[{"role": "user", "content": "\ud800 hi"}]),
     ADMIN_KEY, 400, "invalid_json"),
    ("lone surrogate in prompt", "POST", COMPLETIONS, completion(prompt="\udfff"), ADMIN_KEY, 400,
     "invalid_json"),
    ("lone surrogate in query", "POST", RETRIEVE, {"query": "\ud800", "collection": "c"}, ADMIN_KEY, 400,
     "invalid_json"),
    ("missing model", "POST", CHAT, {"messages": [{"role": "user", "content": "hi"}]}, ADMIN_KEY, 400,
     "missing_required_parameter"),
    ("model not a string", "POST", CHAT, chat(model=7), ADMIN_KEY, 400, "invalid_type"),
    ("unknown model", "POST", CHAT, chat(model="gpt-9"), ADMIN_KEY, 404, "model_not_found"),
    ("missing messages", "POST", CHAT, {"model": M}, ADMIN_KEY, 400, "missing_required_parameter"),
    ("messages not a list", "POST", CHAT, chat(messages="hi"), ADMIN_KEY, 400, "invalid_type"),
    ("empty messages", "POST", CHAT, chat(messages=[]), ADMIN_KEY, 400, "invalid_type"),
    ("bad role", "POST", CHAT, chat(messages=[{"role": "wizard", "content": "x"}]), ADMIN_KEY, 400,
     "invalid_value"),
    ("content a number", "POST", CHAT, chat(messages=[{"role": "user", "content": 5}]), ADMIN_KEY, 400,
     "invalid_type"),
    ("image content part", "POST", CHAT, chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]), ADMIN_KEY, 400, "invalid_value"),
    ("max_tokens string", "POST", CHAT, chat(max_tokens="10"), ADMIN_KEY, 400, "invalid_type"),
    ("max_tokens zero", "POST", CHAT, chat(max_tokens=0), ADMIN_KEY, 400, "invalid_value"),
    ("temperature negative", "POST", CHAT, chat(temperature=-1), ADMIN_KEY, 400, "invalid_value"),
    ("temperature bool", "POST", CHAT, chat(temperature=True), ADMIN_KEY, 400, "invalid_type"),
    ("top_p zero", "POST", CHAT, chat(top_p=0), ADMIN_KEY, 400, "invalid_value"),
    ("top_k float", "POST", CHAT, chat(top_k=1.5), ADMIN_KEY, 400, "invalid_type"),
    ("seed string", "POST", CHAT, chat(seed="abc"), ADMIN_KEY, 400, "invalid_type"),
    ("stop not strings", "POST", CHAT, chat(stop=[1, 2]), ADMIN_KEY, 400, "invalid_type"),
    ("too many stops", "POST", CHAT, chat(stop=[str(i) for i in range(17)]), ADMIN_KEY, 400, "invalid_value"),
    ("n = 2", "POST", CHAT, chat(n=2), ADMIN_KEY, 400, "unsupported_value"),
    ("logprobs", "POST", CHAT, chat(logprobs=True), ADMIN_KEY, 400, "unsupported_value"),
    ("tools", "POST", CHAT, chat(tools=[{"type": "function"}]), ADMIN_KEY, 400, "unsupported_value"),
    ("stream not bool", "POST", CHAT, chat(stream="yes"), ADMIN_KEY, 400, "invalid_type"),
    ("stream_options without stream", "POST", CHAT, chat(stream_options={"include_usage": True}), ADMIN_KEY,
     400, None),
    ("min_tokens over max", "POST", CHAT, chat(min_tokens=5, max_tokens=2), ADMIN_KEY, 400, None),
    ("context length exceeded", "POST", CHAT, chat(max_tokens=100000), ADMIN_KEY, 400,
     "context_length_exceeded"),
    ("prompt over context", "POST", COMPLETIONS, completion(prompt="word " * 9000), ADMIN_KEY, 400,
     "context_length_exceeded"),
    ("prompt missing", "POST", COMPLETIONS, {"model": M}, ADMIN_KEY, 400, "missing_required_parameter"),
    ("prompt token out of vocab", "POST", COMPLETIONS, completion(prompt=[10**9]), ADMIN_KEY, 400,
     "invalid_value"),
    ("batched prompts", "POST", COMPLETIONS, completion(prompt=["a", "b"]), ADMIN_KEY, 400,
     "unsupported_value"),
    ("prompt an object", "POST", COMPLETIONS, completion(prompt={"a": 1}), ADMIN_KEY, 400, "invalid_type"),
    ("echo", "POST", COMPLETIONS, completion(echo=True), ADMIN_KEY, 400, "unsupported_value"),
    ("oversized body", "POST", CHAT, b'{"model": "' + b"x" * (5 * 1024 * 1024) + b'"}', ADMIN_KEY, 413,
     "payload_too_large"),
    ("no key", "POST", CHAT, chat(), None, 401, "invalid_api_key"),
    ("bad key", "POST", CHAT, chat(), "apk_000000000000_nope", 401, "invalid_api_key"),
    ("key without prefix", "GET", "/v1/models", None, "sk-something-else", 401, "invalid_api_key"),
    ("unknown endpoint", "GET", "/v1/nothing", None, ADMIN_KEY, 404, "unknown_url"),
    ("wrong method", "GET", CHAT, None, ADMIN_KEY, 405, "method_not_allowed"),
    ("retrieve missing query", "POST", RETRIEVE, {"collection": "c"}, ADMIN_KEY, 400,
     "missing_required_parameter"),
    ("retrieve bad collection name", "POST", RETRIEVE, {"query": "q", "collection": "../etc"}, ADMIN_KEY, 400,
     "invalid_value"),
    ("retrieve unknown collection", "POST", RETRIEVE, {"query": "q", "collection": "nope"}, ADMIN_KEY, 404,
     "collection_not_found"),
    ("retrieve top_k too big", "POST", RETRIEVE, {"query": "q", "collection": "c", "top_k": 10**6},
     ADMIN_KEY, 400, "invalid_value"),
    ("retrieve bad mode", "POST", RETRIEVE, {"query": "q", "collection": "c", "mode": "magic"}, ADMIN_KEY,
     400, "invalid_value"),
    ("query unknown collection", "POST", QUERY, {"query": "q", "collection": "nope"}, ADMIN_KEY, 404,
     "collection_not_found"),
    ("upload not multipart", "POST", "/v1/collections/c/documents", {"file": "x"}, ADMIN_KEY, 400,
     "invalid_content_type"),
    ("documents of unknown collection", "GET", "/v1/collections/nope/documents", None, ADMIN_KEY, 404,
     "collection_not_found"),
    ("delete unknown document", "DELETE", "/v1/collections/c/documents/nope", None, ADMIN_KEY, 404,
     "document_not_found"),
    ("admin tenant without name", "POST", "/admin/tenants", {}, ADMIN_KEY, 400, "missing_required_parameter"),
    ("admin key for unknown tenant", "POST", "/admin/keys", {"tenant": "ghost"}, ADMIN_KEY, 404,
     "tenant_not_found"),
    ("admin key bad role", "POST", "/admin/keys", {"tenant": "admin", "role": "root"}, ADMIN_KEY, 400,
     "invalid_value"),
    ("revoke unknown key", "DELETE", "/admin/keys/nope", None, ADMIN_KEY, 404, "key_not_found"),
]


async def _send(session: aiohttp.ClientSession, url: str, case: tuple, model: str) -> tuple[int, dict]:
    _, method, path, body, key, _, _ = case
    if isinstance(body, dict):
        body = json.dumps(body).replace(json.dumps(M), json.dumps(model)).encode()
    headers = {"Content-Type": "application/json", **(auth(key) if key else {})}
    async with session.request(method, url + path, data=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


def test_battery_of_bad_requests_gets_openai_errors(server, run):
    assert len(CASES) >= 30

    async def go() -> list:
        async with aiohttp.ClientSession() as session:
            return [await _send(session, server.url, case, server.model) for case in CASES]

    results = run(go())
    for case, (status, payload) in zip(CASES, results, strict=True):
        name, *_, expected_status, expected_code = case
        err = assert_openai_error(status, payload, expected_status)
        if expected_code is not None:
            assert err["code"] == expected_code, (name, err)
        if status == 400 and err["param"] is not None:
            assert isinstance(err["param"], str)
    assert server.health() == 200
    assert server.get_json("/v1/models")["data"][0]["id"] == server.model


@pytest.mark.parametrize("field,value,param", [
    ("max_tokens", "x", "max_tokens"), ("temperature", "hot", "temperature"), ("top_p", 7, "top_p"),
])
def test_errors_name_the_offending_field(server, run, field, value, param):
    async def go():
        async with aiohttp.ClientSession() as s:
            body = {"model": server.model, "messages": [{"role": "user", "content": "x"}], field: value}
            async with s.post(server.url + CHAT, json=body, headers=auth(ADMIN_KEY)) as r:
                return r.status, await r.json()

    status, payload = run(go())
    assert assert_openai_error(status, payload, 400)["param"] == param


def test_context_length_error_carries_the_numbers(server, run):
    async def go():
        async with aiohttp.ClientSession() as s:
            body = {"model": server.model, "prompt": "hello", "max_tokens": 10**7}
            async with s.post(server.url + COMPLETIONS, json=body, headers=auth(ADMIN_KEY)) as r:
                return r.status, await r.json()

    status, payload = run(go())
    err = assert_openai_error(status, payload, 400)
    assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"
    assert "10000000" in err["message"] and "maximum context length" in err["message"]
