"""Schemathesis fuzzing of the served OpenAPI document: no generated request may get a 5xx.

Both schema-valid (positive) and schema-violating (negative) requests are generated per operation,
with a tenant key. Positive requests are steered to reach real work: the served model's name, a
collection that exists, and max_tokens capped small so generation stays cheap on a CPU.
"""

from __future__ import annotations

import asyncio
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from appliance.server.openapi import openapi_document
from tests.server.conftest import make_tenant
from tests.server.test_rag import LIGHTHOUSE, _upload


def _cases() -> list:
    """(method, path, mode) for every operation; negative only where there is input to get wrong."""
    cases = []
    for path, item in openapi_document()["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "delete"):
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
