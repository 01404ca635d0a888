"""Model versions on a real server: the bundled GGUF as v1 (float weights) beside int4 versions of it.

One server for the module, with a 1.2 GiB model memory budget: v1 (fp32 weights, 0.25 GiB KV pool)
takes ~0.8 GiB of it, so an int4 version (~0.1 GiB of weights) fits beside it and a second float
version does not. The tests run in file order; each adds the versions it needs under its own names.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import aiohttp
import pytest
from openai import AsyncOpenAI

from appliance.server.model_routing import RouteRequest, bucket
from engine.loader import bundled_model_path
from tests.server.conftest import make_tenant
from tests.server.helpers import ADMIN_KEY, ServerProcess, appliance_bin, auth, served

LOAD_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def mv_server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("versions") / "data"
    env = {"APPLIANCE_MODEL_MEMORY_GIB": "1.2", "APPLIANCE_CANARY_CHECK_INTERVAL_S": "0.5",
           "APPLIANCE_ALERT_INTERVAL_S": "0.5",
           "APPLIANCE_MODEL_ROLLBACK_GRACE_S": "600"}
    with served(ServerProcess(data_dir, env_extra=env)) as proc:
        yield proc


def call(server: ServerProcess, method: str, path: str, body: dict | None = None,
         key: str = ADMIN_KEY) -> tuple[int, dict]:
    async def go() -> tuple[int, dict]:
        async with aiohttp.ClientSession() as s, s.request(method, server.url + path, json=body,
                                                           headers=auth(key)) as resp:
            return resp.status, await resp.json()
    return asyncio.run(go())


def add_version(server: ServerProcess, name: str, **fields) -> dict:
    """Add a version and wait until it has loaded (or failed); returns its document."""
    status, doc = call(server, "POST", "/admin/models", {"name": name, **fields})
    assert status == 202, doc
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while doc["state"] == "loading" and time.monotonic() < deadline:
        time.sleep(0.5)
        doc = call(server, "GET", f"/admin/models/{name}")[1]
    return doc


def wait_unloaded(server: ServerProcess, name: str) -> dict:
    deadline = time.monotonic() + 60
    doc = call(server, "GET", f"/admin/models/{name}")[1]
    while doc["loaded"] and time.monotonic() < deadline:
        time.sleep(0.3)
        doc = call(server, "GET", f"/admin/models/{name}")[1]
    return doc


async def chat(session: aiohttp.ClientSession, server: ServerProcess, model: str, session_id: str = "",
               key: str = ADMIN_KEY, content: str = "Say hi.", max_tokens: int = 1) -> tuple[int, str, dict]:
    headers = {**auth(key), "X-Session-Id": session_id} if session_id else auth(key)
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": content}]}
    async with session.post(server.url + "/v1/chat/completions", json=body, headers=headers) as resp:
        return resp.status, resp.headers.get("X-Model-Version", ""), await resp.json()


def test_a_bad_version_is_refused_and_the_live_one_keeps_serving(mv_server, tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    status, doc = call(mv_server, "POST", "/admin/models", {"name": "junk", "source": str(garbage)})
    assert (status, doc["error"]["code"], doc["error"]["param"]) == (400, "model_unusable", "source")
    assert "cannot read GGUF file" in doc["error"]["message"]

    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    (gpt2 / "model.safetensors").write_bytes(b"\0" * 16)
    status, doc = call(mv_server, "POST", "/admin/models", {"name": "gpt2", "source": str(gpt2)})
    assert (status, doc["error"]["code"]) == (400, "model_unusable")
    assert "Llama family only" in doc["error"]["message"]

    status, doc = call(mv_server, "POST", "/admin/models", {"name": "fp32-again", "quantization": "none",
                                                           "dtype": "float32"})
    assert (status, doc["error"]["code"]) == (400, "model_too_large"), doc
    assert "does not fit in memory" in doc["error"]["message"] and "budget" in doc["error"]["message"]

    # Damaged tensor data behind a readable header: found while loading, in the background.
    truncated = tmp_path / "truncated.gguf"
    with open(bundled_model_path(), "rb") as src:
        truncated.write_bytes(src.read(60 << 20))
    status, doc = call(mv_server, "POST", "/admin/models", {"name": "cut", "source": str(truncated),
                                                           "quantization": "int4"})
    if status == 202:  # registered: wait for its load to end
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while doc["state"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.5)
            doc = call(mv_server, "GET", "/admin/models/cut")[1]
        assert doc["state"] == "failed" and doc["error"], doc
    else:
        assert (status, doc["error"]["code"]) == (400, "model_unusable"), doc

    overview = call(mv_server, "GET", "/admin/models")[1]
    assert overview["live"] == "v1"
    assert [v["name"] for v in overview["versions"] if v["loaded"]] == ["v1"]

    async def still_serving() -> tuple[int, str, dict]:
        async with aiohttp.ClientSession() as s:
            return await chat(s, mv_server, mv_server.model)
    status, version, _ = asyncio.run(still_serving())
    assert (status, version) == (200, "v1")


def test_the_canary_split_holds_and_is_sticky(mv_server):
    doc = add_version(mv_server, "q4", quantization="int4", notes="int4 weights")
    assert doc["state"] == "ready" and doc["weights_sha256"], doc
    status, doc = call(mv_server, "POST", "/admin/models/q4/canary", {"share": 0.3})
    assert (status, doc["state"], doc["canary_share"]) == (200, "canary", 0.3)
    sessions = [f"conversation-{i}" for i in range(60)]

    async def go() -> dict[str, list[str]]:
        async with aiohttp.ClientSession() as s:
            seen: dict[str, list[str]] = {sid: [] for sid in sessions}
            for _ in range(2):
                results = await asyncio.gather(*(chat(s, mv_server, mv_server.model, sid)
                                                 for sid in sessions))
                for sid, (status, version, _) in zip(sessions, results, strict=True):
                    assert status == 200
                    seen[sid].append(version)
            return seen
    seen = asyncio.run(go())
    assert all(len(set(versions)) == 1 for versions in seen.values()), "a conversation changed version"
    on_canary = {sid for sid, versions in seen.items() if versions[0] == "q4"}
    # What the split promises: exactly the conversations whose point falls under the share.
    expected = {sid for sid in sessions if bucket("q4", RouteRequest("admin", sid, "chat", 0)) < 0.3}
    assert on_canary == expected
    assert 6 <= len(on_canary) <= 30  # 60 draws at p = 0.3: mean 18, sd 3.5

    call(mv_server, "POST", "/admin/models/q4/canary", {"share": 0.6})  # more traffic: nobody leaves it

    async def again() -> set[str]:
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(*(chat(s, mv_server, mv_server.model, sid) for sid in sessions))
            return {sid for sid, (_, version, _) in zip(sessions, results, strict=True) if version == "q4"}
    assert on_canary < asyncio.run(again())
    metrics = call(mv_server, "GET", "/admin/models/q4")[1]["metrics"]
    assert metrics["routes"]["canary"] >= 2 * len(on_canary) and metrics["errors_total"] == 0


async def _stream(client: AsyncOpenAI, model: str, i: int, started: asyncio.Event | None) -> tuple[str, str]:
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"Count to twenty, stream {i}."}], max_tokens=24,
        temperature=0, stream=True, extra_body={"ignore_eos": True},
        extra_headers={"X-Session-Id": f"load-{i}"})
    text, finish = [], None
    async for chunk in stream:
        if started is not None:
            started.set()
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return "".join(text), finish


def test_promote_and_rollback_under_load_lose_no_request(mv_server):
    assert call(mv_server, "GET", "/admin/models")[1]["canary"] == "q4"
    client = AsyncOpenAI(base_url=mv_server.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=300)

    async def go() -> list[tuple[str, str]]:
        first = [asyncio.Event() for _ in range(32)]
        wave = [asyncio.create_task(_stream(client, mv_server.model, i, first[i])) for i in range(32)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first)), 240)
        status, doc = await asyncio.to_thread(call, mv_server, "POST", "/admin/models/promote")
        assert (status, doc["state"], doc["previous_live"]) == (200, "live", "v1"), doc
        second = [asyncio.create_task(_stream(client, mv_server.model, 32 + i, None)) for i in range(32)]
        await asyncio.sleep(0.5)
        status, doc = await asyncio.to_thread(call, mv_server, "POST", "/admin/models/rollback",
                                              {"reason": "test: back to v1"})
        assert (status, doc["retired"], doc["live"]) == (200, "q4", "v1"), doc
        return await asyncio.gather(*wave, *second)
    results = asyncio.run(go())
    assert len(results) == 64
    assert all(finish == "length" and text for text, finish in results), results
    overview = call(mv_server, "GET", "/admin/models")[1]
    assert (overview["live"], overview["canary"]) == ("v1", None)
    assert wait_unloaded(mv_server, "q4")["state"] == "retired"  # once its streams had ended
    events = [(e["action"], e["version"], e["previous"]) for e in overview["events"][:2]]
    assert events == [("rollback", "v1", "q4"), ("promote", "q4", "v1")]
    audit = call(mv_server, "GET", "/admin/audit?limit=200")[1]["entries"]
    moves = [(e["route"], e["key_id"], e["status"], json.loads(e["detail"] or "{}")) for e in audit
             if e["route"].startswith("/admin/models/")]
    assert ("/admin/models/promote", "env-admin", 200, {"version": "q4", "previous": "v1"}) in moves
    assert ("/admin/models/rollback", "env-admin", 200,
            {"retired": "q4", "live": "v1", "reason": "test: back to v1"}) in moves
    served_by = {e["model_version"] for e in audit if e["route"] == "/v1/chat/completions"}
    assert {"v1", "q4"} <= served_by


def test_a_canary_that_breaks_its_objective_is_rolled_back(mv_server):
    doc = add_version(mv_server, "q4-slow", quantization="int4")
    assert doc["state"] == "ready", doc
    objective = {"min_requests": 3, "max_ttft_p90_s": 1e-6, "window_s": 60}
    status, doc = call(mv_server, "POST", "/admin/models/q4-slow/canary",
                       {"share": 0.0, "tenants": ["admin"], "objective": objective})
    assert status == 200, doc

    async def drive() -> list[str]:
        async with aiohttp.ClientSession() as s:
            return [(await chat(s, mv_server, mv_server.model))[1] for _ in range(3)]
    assert asyncio.run(drive()) == ["q4-slow"] * 3
    deadline = time.monotonic() + 30
    overview = call(mv_server, "GET", "/admin/models")[1]
    while overview["canary"] is not None and time.monotonic() < deadline:
        time.sleep(0.3)
        overview = call(mv_server, "GET", "/admin/models")[1]
    assert overview["canary"] is None and overview["live"] == "v1"
    event = overview["events"][0]
    assert (event["action"], event["version"], event["actor"]) == ("auto_rollback", "q4-slow", None)
    assert "TTFT p90" in event["reason"] and "3 requests" in event["reason"]
    assert wait_unloaded(mv_server, "q4-slow")["state"] == "retired"
    alert = _alert(mv_server, "canary_rolled_back", "q4-slow")  # the dashboard's alert strip shows it
    assert alert["state"] == "firing" and "rolled back automatically" in alert["summary"]


def _alert(server: ServerProcess, name: str, version: str) -> dict:
    """The alert once the rules have been evaluated after the event (every 0.5 s here)."""
    deadline = time.monotonic() + 15
    while True:
        listed = call(server, "GET", "/admin/alerts")[1]["alerts"]
        found = [a for a in listed if (a["name"], a["labels"].get("version")) == (name, version)]
        if (found and found[0]["state"] == "firing") or time.monotonic() > deadline:
            return found[0] if found else {"state": "missing", "summary": ""}
        time.sleep(0.3)


def test_versions_keep_their_own_kv_and_tenants_only_their_permitted_versions(mv_server):
    assert add_version(mv_server, "q4-named", quantization="int4")["state"] == "ready"
    prompt = "Describe a lighthouse keeper's morning in three sentences, with the weather and the sea."

    async def cached_tokens() -> list[int]:
        async with aiohttp.ClientSession() as s:
            out = []
            for model in ("v1", "v1", "q4-named", "q4-named"):
                status, version, body = await chat(s, mv_server, model, content=prompt)
                assert (status, version) == (200, model)
                out.append(body["usage"]["prompt_tokens_details"]["cached_tokens"])
            return out
    _, again_v1, first_q4, again_q4 = asyncio.run(cached_tokens())
    assert again_v1 > 0 and again_q4 > 0
    assert first_q4 == 0  # v1's blocks of the same prompt are not in q4-named's pool

    key = make_tenant(mv_server, "only-v1")
    status, _ = call(mv_server, "PUT", "/admin/models/access", {"tenant": "only-v1", "versions": ["v1"]})
    assert status == 200
    status, models = call(mv_server, "GET", "/v1/models", key=key)
    assert [m["id"] for m in models["data"]] == [mv_server.model, "v1"]

    async def as_tenant() -> tuple[tuple, tuple]:
        async with aiohttp.ClientSession() as s:
            return await chat(s, mv_server, "q4-named", key=key), await chat(s, mv_server, "v1", key=key)
    refused, allowed = asyncio.run(as_tenant())
    assert (refused[0], refused[2]["error"]["code"]) == (403, "model_not_permitted")
    assert allowed[:2] == (200, "v1")


def test_rules_route_by_kind_and_prompt_length_before_the_split(mv_server):
    rules = [{"name": "long-to-q4", "version": "q4-named", "min_prompt_tokens": 40},
             {"name": "completions-to-q4", "version": "q4-named", "kind": "completion"}]
    status, doc = call(mv_server, "PUT", "/admin/models/rules", {"rules": rules})
    assert status == 200, doc
    long_prompt = "Tell me about the harbour. " * 12

    async def go() -> list[str]:
        async with aiohttp.ClientSession() as s:
            short = await chat(s, mv_server, mv_server.model, content="Hi.")
            long = await chat(s, mv_server, mv_server.model, content=long_prompt)
            body = {"model": mv_server.model, "prompt": "Once upon a time", "max_tokens": 1}
            async with s.post(mv_server.url + "/v1/completions", json=body, headers=auth(ADMIN_KEY)) as resp:
                completion = resp.headers.get("X-Model-Version", "")
            return [short[1], long[1], completion]
    assert asyncio.run(go()) == ["v1", "q4-named", "q4-named"]
    overview = call(mv_server, "GET", "/admin/models")[1]
    hits = [(r["name"], r["hits"]) for r in overview["rules"]]
    assert hits == [("long-to-q4", 1), ("completions-to-q4", 1)]
    status, doc = call(mv_server, "PUT", "/admin/models/rules", {"rules": [{"name": "x", "version": "nope"}]})
    assert (status, doc["error"]["param"]) == (400, "version")
    text = asyncio.run(_metrics(mv_server))
    assert 'appliance:model_version_routed_total{reason="rule:long-to-q4",version="q4-named"} 1' in text
    call(mv_server, "PUT", "/admin/models/rules", {"rules": []})


async def _metrics(server: ServerProcess) -> str:
    async with aiohttp.ClientSession() as s, s.get(server.url + "/metrics") as resp:
        return await resp.text()


def appliance_models(server: ServerProcess, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([appliance_bin(), "models", *argv, "--url", server.url, "--api-key", ADMIN_KEY],
                          capture_output=True, text=True, timeout=120)


def test_the_models_command_lists_promotes_and_explains_refusals(mv_server):
    listed = appliance_models(mv_server, "list")
    assert listed.returncode == 0, listed.stderr
    assert "live v1, canary -" in listed.stdout and "q4-named" in listed.stdout
    refused = appliance_models(mv_server, "rollback")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "nothing to roll back" in refused.stderr
    promoted = appliance_models(mv_server, "promote", "q4-named")
    assert promoted.returncode == 0, promoted.stderr
    assert "q4-named: live (previous live v1" in promoted.stdout
    retired = appliance_models(mv_server, "retire", "v1")  # not kept for the grace period after all
    assert (retired.returncode, retired.stdout.strip()) == (0, "v1: retired"), retired.stderr


def test_a_restart_comes_back_with_the_promoted_version(mv_server):
    assert mv_server.stop() == 0
    mv_server.start()
    mv_server.wait_ready()
    overview = call(mv_server, "GET", "/admin/models")[1]
    assert (overview["live"], overview["previous_live"]) == ("q4-named", None)
    states = {v["name"]: (v["state"], v["loaded"]) for v in overview["versions"]}
    assert states["q4-named"] == ("live", True) and states["v1"] == ("retired", False)
