"""The Ask screen's window on the appliance: act as a tenant, list its collections, stream an answer.

The admin key acts as its own tenant `admin` for retrieval, so asking from another tenant's
collections needs that tenant's identity. The dashboard mints a key for it (role `tenant`, named
`dashboard-ask` so the key list and the audit log say where the questions came from), keeps the
plaintext in memory only, and revokes it as soon as the operator picks another tenant or leaves the
screen: at most one such key is alive per open Ask screen. Asking as `admin` uses the admin key itself.

The answer comes as SSE from `POST /v1/rag/query` (stream=true); each event is handed over as it
arrives so the screen draws the answer as it grows. The response's `X-Trace-Id` header, when the
server sends one, comes first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from tui.client import TIMEOUT, UNREACHABLE, ApiError, ApplianceClient, _parse_json, _status_error

ADMIN_TENANT = "admin"
ASK_KEY_NAME = "dashboard-ask"
STREAM_READ_TIMEOUT_S = 300.0  # between two events: a CPU server may queue the request a while


@dataclass(slots=True, frozen=True)
class AnswerStarted:
    """The server accepted the question; its headers are in."""

    trace_id: str | None


@dataclass(slots=True, frozen=True)
class AnswerDelta:
    text: str


@dataclass(slots=True, frozen=True)
class Source:
    label: str
    source: str
    chunk_index: int
    score: float | None


@dataclass(slots=True, frozen=True)
class AnswerFinished:
    sources: list[Source]
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    finish_reason: str | None


AnswerEvent = AnswerStarted | AnswerDelta | AnswerFinished


class AskClient(ApplianceClient):
    """The dashboard's client plus what asking needs: tenant keys, per-key reads, a streamed answer."""

    async def mint_key(self, tenant: str) -> tuple[str, str]:
        """(key_id, key): a tenant key for the Ask screen."""
        body = await self._json("POST", "/admin/keys",
                                json={"tenant": tenant, "role": "tenant", "name": ASK_KEY_NAME})
        return str(body["id"]), str(body["key"])

    async def revoke_key(self, key_id: str) -> None:
        await self._json("DELETE", f"/admin/keys/{quote(key_id, safe='')}")

    async def collection_names(self, key: str | None) -> list[str]:
        """The collections the key's tenant owns (None: the admin key's own, tenant `admin`)."""
        body = await self._json("GET", "/v1/collections", headers=_auth(key))
        return sorted(str(c["name"]) for c in body.get("collections", []))

    async def ask(self, key: str | None, collection: str, question: str,
                  max_tokens: int) -> AsyncIterator[AnswerEvent]:
        """Stream one RAG answer; raises ApiError when it is refused or breaks off."""
        await self.open()
        assert self._session is not None
        body = {"query": question, "collection": collection, "max_tokens": max_tokens, "stream": True}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total,
                                        sock_read=STREAM_READ_TIMEOUT_S)
        try:
            async with self._session.post(self.base_url + "/v1/rag/query", json=body, headers=_auth(key),
                                          timeout=timeout) as response:
                if response.status >= 400:
                    raise _status_error(response.status, _parse_json(await response.text()))
                yield AnswerStarted(response.headers.get("X-Trace-Id"))
                async for event in _events(response):
                    yield event
        except asyncio.TimeoutError:
            raise ApiError(f"{self.base_url} sent nothing for {STREAM_READ_TIMEOUT_S:g} s while answering",
                           code=TIMEOUT) from None
        except aiohttp.ClientError as exc:
            raise ApiError(f"lost the connection to {self.base_url} while asking ({type(exc).__name__})",
                           code=UNREACHABLE) from None


def _auth(key: str | None) -> dict[str, str] | None:
    """Headers that replace the session's admin key with `key` (None keeps the admin key)."""
    return {"Authorization": f"Bearer {key}"} if key else None


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[AnswerDelta | AnswerFinished]:
    async for raw in response.content:
        line = raw.decode("utf-8", errors="replace").strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[len("data: "):])
        if "error" in event:
            error = event["error"]
            raise ApiError(f"the answer broke off: {error.get('message')}", code=error.get("code"))
        if event.get("delta"):
            yield AnswerDelta(event["delta"])
        if "sources" in event:
            yield _finished(event)


def _finished(event: dict) -> AnswerFinished:
    usage = event.get("usage") or {}
    sources = [Source(str(s.get("label", "")), str(s.get("source", "")), int(s.get("chunk_index", 0)),
                      s.get("score")) for s in event.get("sources", [])]
    return AnswerFinished(sources, int(usage.get("prompt_tokens", 0)),
                          int((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)),
                          int(usage.get("completion_tokens", 0)), event.get("finish_reason"))


class TenantKeys:
    """Which tenant the screen acts as, and the one minted key that lets it (revoked when done)."""

    def __init__(self, client: AskClient) -> None:
        self.client = client
        self.tenant: str | None = None
        self.key: str | None = None  # None while acting as admin: the session's own key
        self._key_id: str | None = None

    async def act_as(self, tenant: str) -> None:
        """Switch to `tenant`: the previous minted key is revoked first; raises ApiError."""
        if tenant == self.tenant:
            return
        await self.release()
        if tenant != ADMIN_TENANT:
            self._key_id, self.key = await self.client.mint_key(tenant)
        self.tenant = tenant

    async def release(self) -> None:
        """Revoke the minted key, if any (a key already gone counts as revoked)."""
        key_id, self._key_id, self.key, self.tenant = self._key_id, None, None, None
        if key_id is None:
            return
        try:
            await self.client.revoke_key(key_id)
        except ApiError as exc:
            if exc.status != 404:
                raise
