"""Fuzzing the API: no request, however wrong, may get a 5xx or stop the server from serving.

Two layers. Schemathesis generates schema-valid (positive) and schema-violating (negative) requests
for every public operation of the served OpenAPI document, with a tenant key (admin operations are
left out: a tenant key only gets their 403). Positive requests are steered to reach real work: the
served model's name, a collection that exists, and max_tokens capped small so generation stays cheap.
Then hypothesis mutates valid bodies of the generation and retrieval endpoints field by field, with
values the schema does not describe: every documented field and unknown ones, wrong types, huge and
negative numbers, token ids out of the vocabulary (in prompts and stop_token_ids, with min_tokens so
the sampler would see them), logit_bias maps. Every answer must be a 200 that completes or a 4xx in
the OpenAI error shape.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from functools import cache

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from appliance.server.openapi import openapi_document
from tests.server.conftest import make_tenant
from tests.server.helpers import assert_openai_error, sse_events
from tests.server.test_rag import LIGHTHOUSE, QUESTION, _upload


def _cases() -> list:
    """(method, path, mode) for every operation; negative only where there is input to get wrong."""
    cases = []
    for path, item in openapi_document()["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "delete") or "admin" in op.get("tags", []):
                continue
            has_input = bool(op.get("requestBody") or op.get("parameters") or item.get("parameters"))
            modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if has_input else [])
            cases += [pytest.param(method.upper(), path, mode, id=f"{method.upper()} {path} {mode.value}")
                      for mode in modes]
    return cases


# FUZZ_SCALE=10 runs ten times as many examples (a deeper local run; CI keeps the default).
SCALE = int(os.environ.get("FUZZ_SCALE", "1"))
EXAMPLES = {GenerationMode.POSITIVE: 10 * SCALE, GenerationMode.NEGATIVE: 20 * SCALE}
FUZZ_COLLECTION = "fz"


@pytest.fixture(scope="module")
def fuzz_key(server) -> str:
    key = make_tenant(server, "fuzzer")
    status, _ = asyncio.run(_upload(server.url, key, FUZZ_COLLECTION, {"lighthouse.txt": LIGHTHOUSE}))
    assert status == 200
    return key


@pytest.fixture(scope="module")
def schema(server, fuzz_key):
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


def _steer(case, model: str) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    if "model" in body:
        body["model"] = model
    if "collection" in body:
        body["collection"] = FUZZ_COLLECTION
    for name in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(name), int) and not isinstance(body.get(name), bool):
            body[name] = max(1, min(body[name], 2))
    if body.get("max_tokens") is None and ("model" in body or "collection" in body):
        body["max_tokens"] = 2  # absent or null would mean the server default (256)


def _cap(case) -> None:
    """Negative cases keep their shape, but a valid-looking huge max_tokens is still capped."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 2:
        body["max_tokens"] = 2


@pytest.mark.parametrize("method,path,mode", _cases())
def test_fuzz_finds_no_server_error(server, schema, fuzz_key, method, path, mode):
    operation = schema[path][method]
    strategy = operation.as_strategy(generation_mode=mode, headers={"Authorization": f"Bearer {fuzz_key}"})
    failures = []

    @settings(max_examples=EXAMPLES[mode], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {fuzz_key}"}
        if mode is GenerationMode.POSITIVE:
            _steer(case, server.model)
        else:
            _cap(case)
        response = case.call(base_url=server.url, timeout=120)
        if response.status_code >= 500:
            failures.append((case.method, case.path, case.body, response.status_code, response.text[:300]))
        assert response.status_code < 500, failures[-1]

    check()
    assert server.health() == 200


# --- field by field: every request field of the generation and retrieval endpoints ---------------
FIELD_EXAMPLES = 40 * SCALE
UNKNOWN_FIELDS = ["frobnicate", "extra_body", "__proto__"]
# Fields where ids reach the engine (stop_token_ids twice: it is where the sampler indexes by id).
RISKY_FIELDS = ["stop_token_ids", "prompt", "stop_token_ids", "logit_bias", "messages"]
ENDPOINTS = {  # path -> (request schema, a valid body)
    "/v1/chat/completions": ("ChatRequest", {"messages": [{"role": "user", "content": "Hi"}]}),
    "/v1/completions": ("CompletionRequest", {"prompt": "Hi"}),
    "/v1/rag/query": ("RagQueryRequest", {"query": QUESTION, "collection": FUZZ_COLLECTION}),
    "/v1/rag/retrieve": ("RetrieveRequest", {"query": QUESTION, "collection": FUZZ_COLLECTION, "top_k": 2}),
}
EDGE_NUMBERS = [0, -1, 1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63, 2**64, -(2**63), 10**30, 1e308, -0.5,
                0.5]
NASTY = st.one_of(
    st.none(), st.booleans(), st.sampled_from(EDGE_NUMBERS), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6),
    st.lists(st.integers(-(2**40), 2**40), max_size=3), st.lists(st.text(max_size=4), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(-200, 200), max_size=2),
    st.fixed_dictionaries({"role": st.sampled_from(["user", "tool", ""]), "content": st.text(max_size=4)}),
)


@cache
def vocab_size() -> int:
    import gguf

    from engine.loader import bundled_model_path, gguf_config

    path = bundled_model_path()
    return gguf_config(gguf.GGUFReader(str(path)), path).vocab_size


def token_ids(vocab: int) -> st.SearchStrategy:
    """Lists of ids around every edge: in range, just out, negative, int32 and int64 limits."""
    # hypothesis treats earlier elements as simpler and draws them more: the subtle ones come first
    edges = st.sampled_from([vocab, 2**31 - 1, vocab - 1, vocab + 1, 2**31, 2**63, 2**64, -1, -(2**63)])
    ids = st.one_of(edges, st.integers(0, vocab - 1), st.integers(vocab, 2**31 - 1),
                    st.integers(-(2**40), 2**40))
    return st.one_of(st.lists(edges, min_size=1, max_size=2), st.lists(ids, min_size=1, max_size=3))


def field_values(name: str, vocab: int) -> st.SearchStrategy:
    if name in ("stop_token_ids", "prompt"):
        return st.one_of(token_ids(vocab), token_ids(vocab), NASTY)
    if name == "logit_bias":
        bias = st.dictionaries(st.sampled_from(["0", "1", str(vocab), "-1", "x", str(2**40)]),
                               st.one_of(st.integers(-100, 100), st.text(max_size=2)), min_size=1, max_size=3)
        return st.one_of(bias, NASTY)
    if name == "messages":
        return st.one_of(NASTY, st.lists(NASTY, max_size=3))
    return NASTY


@st.composite
def mutated_bodies(draw, path: str, model: str, vocab: int) -> dict:
    """A valid body of the endpoint with fields made nasty: either one field where ids reach the
    engine, at the vocabulary's edges, or one to three of any fields (documented or unknown)."""
    schema, base = ENDPOINTS[path]
    properties = openapi_document()["components"]["schemas"][schema]["properties"]
    body = {**base, "max_tokens": 2, "temperature": 0.0} if path != "/v1/rag/retrieve" else dict(base)
    if "model" in properties:
        body["model"] = model
    fields = sorted(properties) + UNKNOWN_FIELDS
    risky = [f for f in RISKY_FIELDS if f in fields]
    if risky and draw(st.sampled_from(["edges", "any"])) == "edges":
        names = [draw(st.sampled_from(risky))]
    else:
        names = draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True))
    for name in names:
        body[name] = draw(field_values(name, vocab))
    if "stop_token_ids" in names and "min_tokens" not in names and draw(st.sampled_from([True, False])):
        body["min_tokens"] = 1  # the sampler masks stop ids until min_tokens: ids out of range hurt there
    return _bounded(body, generates=path != "/v1/rag/retrieve")


def _bounded(body: dict, generates: bool) -> dict:
    """Keep generation cheap: a valid token count is capped at 2; no count at all means 2."""
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if integral and not isinstance(value, bool) and 2 < value < 10**6:
            body[name] = 2
    if generates and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"] = 2
    return body


def post(url: str, body: dict, key: str) -> tuple[int, str]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def check_answer(status: int, text: str, body: dict) -> None:
    """A 4xx in the OpenAI shape, or a 200 whose stream (if any) completes without an error event."""
    assert status < 500, (status, body, text[:300])
    if status >= 400:
        assert_openai_error(status, json.loads(text), status)
        return
    assert status == 200, (status, body, text[:300])
    if text.startswith("data:"):
        events = sse_events(text)
        assert events[-1] == "[DONE]", (body, text[-300:])
        assert not [e for e in events if isinstance(e, dict) and "error" in e], (body, text[-300:])
    else:
        json.loads(text)


def _serves(server, key: str) -> None:
    body = {"model": server.model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}
    status, text = post(server.url + "/v1/chat/completions", body, key)
    assert status == 200 and json.loads(text)["usage"]["completion_tokens"] == 2, text
    assert server.health() == 200


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_every_field_fuzzed_gets_a_4xx_or_a_completed_200(server, fuzz_key, path):
    @settings(max_examples=FIELD_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=mutated_bodies(path, server.model, vocab_size()))
    def check(body):
        status, text = post(server.url + path, body, fuzz_key)
        check_answer(status, text, body)

    check()
    _serves(server, fuzz_key)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/rag/query"])
def test_token_ids_at_every_edge(server, fuzz_key, path):
    """Exact expectations at the vocabulary's edge: the last id is fine, the next one is a 400."""
    _, base = ENDPOINTS[path]
    vocab = vocab_size()
    body = {**base, "max_tokens": 2, "min_tokens": 1}
    if "query" not in base:
        body["model"] = server.model
    status, text = post(server.url + path, {**body, "stop_token_ids": [vocab - 1]}, fuzz_key)
    assert status == 200, text
    for bad in (vocab, 2**31 - 1, 2**31, 2**63, -1):
        status, text = post(server.url + path, {**body, "stop_token_ids": [bad]}, fuzz_key)
        assert assert_openai_error(status, json.loads(text), 400)["param"] == "stop_token_ids"
    if path == "/v1/completions":
        assert post(server.url + path, {**body, "prompt": [vocab - 1]}, fuzz_key)[0] == 200
        for bad in ([vocab], [-1], [2**63], [1, 2**40]):
            status, text = post(server.url + path, {**body, "prompt": bad}, fuzz_key)
            assert assert_openai_error(status, json.loads(text), 400)["param"] == "prompt"
    _serves(server, fuzz_key)
