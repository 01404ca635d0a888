"""`appliance ingest --url`: ingest through a running appliance's HTTP API instead of the store.

A running server owns the data dir's store, so a second process must not open it; this client
uploads each file (multipart, one `file` part whose filename is the source path) to
`POST {url}/v1/collections/{collection}/documents` and reports the server's per-file result.
Errors that doom every file (bad key, server unreachable) abort with one message; errors of one
file (too large, unreadable locally) fail that file only. After an ingest it can also set the
collection's settings and ask the server to precompute the collection's chunk KV (admin key).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from urllib.parse import quote

import aiohttp

from rag.discovery import FoundFile, discover
from rag.ingest import IngestProgress, NullProgress
from rag.types import DocResult, IngestSummary

MAX_BUSY_RETRIES = 3
MAX_RETRY_WAIT_S = 10.0


class ApiClientError(Exception):
    """The server cannot be used at all (unreachable, bad key); the message is the whole story."""


class ApiAuthError(ApiClientError):
    """The server refused the key (401) or its role (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class DocumentsClient:
    def __init__(self, url: str, api_key: str | None, timeout_s: float = 600.0) -> None:
        self._base = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    def _collection_url(self, collection: str, tail: str) -> str:
        return f"{self._base}/v1/collections/{quote(collection, safe='')}/{tail}"

    def _documents_url(self, collection: str) -> str:
        return self._collection_url(collection, "documents")

    def upload_paths(
        self,
        paths: Sequence[str],
        collection: str,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        progress: IngestProgress | None = None,
    ) -> IngestSummary:
        started = time.perf_counter()
        files, problems = discover(paths, include, exclude)
        progress = progress or NullProgress()
        progress.begin(len(files) + len(problems), sum(f.size for f in files))
        summary = IngestSummary()
        for problem in problems:
            summary.results.append(DocResult(problem.source, "", "failed", error=problem.error))
            progress.file_done(summary.results[-1])
        summary.results.extend(asyncio.run(self._upload_all(files, collection, progress)))
        summary.seconds = time.perf_counter() - started
        return summary

    async def _upload_all(
        self, files: list[FoundFile], collection: str, progress: IngestProgress
    ) -> list[DocResult]:
        results = []
        async with aiohttp.ClientSession(headers=self._headers, timeout=self._timeout) as session:
            for found in files:
                result = await self._upload_one(session, found, collection)
                progress.advance(result.chunks if result.status in ("added", "replaced") else 0, found.size)
                progress.file_done(result)
                results.append(result)
        return results

    async def _upload_one(
        self, session: aiohttp.ClientSession, found: FoundFile, collection: str
    ) -> DocResult:
        source = str(found.path)
        try:
            data = found.path.read_bytes()
        except OSError as exc:
            return DocResult(source, "", "failed", error=(exc.strerror or str(exc)).lower())
        for attempt in range(MAX_BUSY_RETRIES + 1):
            form = aiohttp.FormData()
            form.add_field("file", data, filename=source, content_type="application/octet-stream")
            status, body, retry_after = await self._request(
                session, "POST", self._documents_url(collection), form
            )
            if status == 503 and attempt < MAX_BUSY_RETRIES:
                await asyncio.sleep(min(retry_after, MAX_RETRY_WAIT_S))
                continue
            break
        if status != 200:
            return DocResult(source, "", "failed", error=f"server answered {status}: {_message(body)}")
        item = (body.get("results") or [{}])[0]
        return DocResult(
            source=source,
            doc_id=item.get("doc_id", ""),
            status=item.get("status", "failed"),
            chunks=int(item.get("chunks") or 0),
            error=item.get("error"),
        )

    def list_documents(self, collection: str) -> list[dict]:
        status, body, _ = asyncio.run(self._single("GET", self._documents_url(collection)))
        if status == 404:
            return []
        if status != 200:
            raise ApiClientError(f"server answered {status}: {_message(body)}")
        return list(body.get("documents", []))

    def delete_document(self, collection: str, doc_id: str) -> bool:
        url = f"{self._documents_url(collection)}/{quote(doc_id, safe='')}"
        status, body, _ = asyncio.run(self._single("DELETE", url))
        if status == 404:
            return False
        if status != 200:
            raise ApiClientError(f"server answered {status}: {_message(body)}")
        return bool(body.get("deleted"))

    def update_collection_settings(self, collection: str, changes: dict[str, str | None]) -> dict:
        """PATCH the collection's settings; returns them as the server now has them."""
        url = self._collection_url(collection, "settings")
        return _success_body(asyncio.run(self._single("PATCH", url, changes)))

    def precompute_chunks(self, collection: str, pin: bool = False) -> dict:
        """Have the server store the KV of every chunk of the collection (an admin action)."""
        body = {"collection": collection, **({"pin": True} if pin else {})}
        try:
            reply = asyncio.run(self._single("POST", f"{self._base}/admin/chunks/precompute", body))
        except ApiAuthError as exc:
            raise ApiClientError(f"precomputing chunk KV needs an admin key (the appliance answered "
                                 f"{exc.status} to this key)") from None
        return _success_body(reply)

    async def _single(self, method: str, url: str, json_body: dict | None = None) -> tuple[int, dict, float]:
        async with aiohttp.ClientSession(headers=self._headers, timeout=self._timeout) as session:
            return await self._request(session, method, url, json_body=json_body)

    async def _request(self, session: aiohttp.ClientSession, method: str, url: str, data=None,
                       json_body: dict | None = None):
        """(status, JSON body or {}, Retry-After seconds); auth failures and no server raise."""
        try:
            async with session.request(method, url, data=data, json=json_body) as response:
                body = await _json_body(response)
                retry_after = _seconds(response.headers.get("Retry-After"))
                status = response.status
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise ApiClientError(
                f"cannot reach the appliance at {self._base}: {exc or type(exc).__name__}"
            ) from None
        if status in (401, 403):
            raise ApiAuthError(status, f"the appliance refused the API key ({status}): {_message(body)}")
        return status, body, retry_after


def _success_body(reply: tuple[int, dict, float]) -> dict:
    status, body, _ = reply
    if status != 200:
        raise ApiClientError(f"server answered {status}: {_message(body)}")
    return body


async def _json_body(response: aiohttp.ClientResponse) -> dict:
    try:
        body = await response.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return {}
    return body if isinstance(body, dict) else {}


def _message(body: dict) -> str:
    error = body.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return "no error message"


def _seconds(value: str | None) -> float:
    try:
        return max(float(value), 0.0) if value else 1.0
    except ValueError:
        return 1.0
