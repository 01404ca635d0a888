"""The real `openai` client against the real server: chat and completions, streaming and not."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from multidict import CIMultiDict

from tests.server.conftest import make_tenant
from tests.server.helpers import ADMIN_KEY, auth, sse_events

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def key(server) -> str:
    return make_tenant(server, "openai-client")


@pytest.fixture(scope="module")
def client(server, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def test_models_lists_the_served_model_then_its_versions(client, server):
    models = client.models.list().data
    assert [m.id for m in models] == [server.model, "v1"]  # v1: the version the server started with
    assert client.models.retrieve(server.model).id == server.model
    assert client.models.retrieve("v1").id == "v1"


def test_chat_completion(client, server):
    resp = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=MAX_TOKENS, temperature=0)
    choice = resp.choices[0]
    assert resp.id.startswith("chatcmpl-") and resp.object == "chat.completion"
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens <= MAX_TOKENS and resp.usage.prompt_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_stream_with_usage(client, server):
    stream = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=MAX_TOKENS,
        temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason in ("stop", "length")
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens >= 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    # Without include_usage no chunk carries usage.
    plain = list(client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=4,
        stream=True))
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason


def test_completion_and_stream_agree_under_greedy(client, server):
    kwargs = {"model": server.model, "prompt": "The three primary colours are", "max_tokens": MAX_TOKENS,
              "temperature": 0, "extra_body": {"ignore_eos": True}}
    full = client.completions.create(**kwargs)
    assert full.object == "text_completion" and full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == MAX_TOKENS
    streamed = list(client.completions.create(stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in streamed) == full.choices[0].text
    assert streamed[-1].choices[0].finish_reason == "length"


def test_seed_and_extras(client, server):
    kwargs = {"model": server.model, "prompt": "A short story:", "max_tokens": 6, "temperature": 1.0,
              "seed": 1234, "extra_body": {"top_k": 20, "ignore_eos": True}}
    first = client.completions.create(**kwargs).choices[0].text
    assert client.completions.create(**kwargs).choices[0].text == first
    stopped = client.completions.create(model=server.model, prompt="1, 2, 3, 4,", max_tokens=12,
                                        temperature=0, stop=[","])
    assert "," not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"


def test_cached_tokens_rise_on_a_repeated_prefix(client, server):
    system = "You are a terse assistant for a museum. " * 8  # several full KV blocks
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Opening hours?"}]
    first = client.chat.completions.create(model=server.model, messages=messages, max_tokens=2)
    second = client.chat.completions.create(model=server.model, messages=messages, max_tokens=2)
    first_cached = first.usage.prompt_tokens_details.cached_tokens
    second_cached = second.usage.prompt_tokens_details.cached_tokens
    assert second_cached > first_cached
    assert second_cached >= 16 * (second.usage.prompt_tokens // 16 - 1)


async def _raw_stream(url: str, body: dict) -> tuple[int, str, dict]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=auth(ADMIN_KEY)) as r:
        return r.status, await r.text(), CIMultiDict(r.headers)


def test_wire_format_of_a_chat_stream(server, run):
    body = {"model": server.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
            "stream": True, "stream_options": {"include_usage": True}}
    status, raw, headers = run(_raw_stream(server.url + "/v1/chat/completions", body))
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] >= 0
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert headers["x-request-id"]
