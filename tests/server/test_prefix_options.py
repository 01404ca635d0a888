"""Prefix-cache options over HTTP: tenant salt by default, an explicit public system prompt, pinning."""

from __future__ import annotations

from openai import OpenAI

from tests.server.conftest import admin_post, make_tenant
from tests.server.helpers import ADMIN_KEY

SYSTEM = ("You are the support assistant of a small library. Answer in one short sentence, politely, "
          "without making anything up; say you do not know when unsure. " * 3)


def _chat(server, key: str, question: str, public: bool) -> int:
    client = OpenAI(base_url=server.url + "/v1", api_key=key)
    r = client.chat.completions.create(
        model=client.models.list().data[0].id, max_tokens=2, temperature=0,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        extra_body={"public_prefix": public} if public else None)
    return r.usage.prompt_tokens_details.cached_tokens


def test_system_prompt_private_unless_marked_public(server):
    key_a = make_tenant(server, "prefix-a")
    key_b = make_tenant(server, "prefix-b")
    admin_post(server, "/admin/cache/flush", {})
    _chat(server, key_a, "When do you open?", public=False)
    assert _chat(server, key_b, "When do you close?", public=False) == 0  # never A's blocks
    assert _chat(server, key_a, "Do you lend DVDs?", public=False) > 0
    _chat(server, key_a, "Where are you?", public=True)
    assert _chat(server, key_b, "Who runs it?", public=True) >= 64  # the public system prompt is shared


def test_pinned_prefix_survives_flush(server):
    admin_post(server, "/admin/cache/flush", {})
    pinned = admin_post(server, "/admin/cache/pin",
                        {"messages": [{"role": "system", "content": SYSTEM}], "public": True})
    assert pinned["pinned_tokens"] >= 64 and pinned["public"] is True
    admin_post(server, "/admin/cache/flush", {})
    key_c = make_tenant(server, "prefix-c")
    assert _chat(server, key_c, "Is it free?", public=True) >= pinned["pinned_tokens"] - 16
    assert admin_post(server, "/admin/cache/unpin", {})["unpinned_blocks"] > 0


def test_pin_rejects_bad_input(server):
    import json
    import urllib.error
    import urllib.request

    for body in ({"prompt": "too short"}, {"messages": "nope"}, {"prompt": 5}):
        req = urllib.request.Request(server.url + "/admin/cache/pin", data=json.dumps(body).encode(),
                                     method="POST", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        try:
            urllib.request.urlopen(req, timeout=30)
            raise AssertionError(f"{body} was accepted")
        except urllib.error.HTTPError as err:
            assert err.code == 400
            assert "error" in json.loads(err.read())
