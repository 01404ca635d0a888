"""The dashboard's only window on the appliance: a small async HTTP client over aiohttp.

Every failure becomes an `ApiError` whose message is written for the operator (it is shown on
screen as is): an unreachable server, a rejected key and a refused request read differently.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

POLL_TIMEOUT_S = 10.0  # a CPU server under load answers between engine steps
UPLOAD_TIMEOUT_S = 600.0
UNREACHABLE, TIMEOUT = "unreachable", "timeout"  # ApiError codes when no HTTP answer came


class ApiError(Exception):
    """A request that did not succeed; `status` is the HTTP status, or None when no answer came."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param  # the request field the server refused, when it names one

    @property
    def is_connection_error(self) -> bool:
        return self.status is None

    @property
    def is_auth_error(self) -> bool:
        return self.status in (401, 403)

    @property
    def label(self) -> str:
        """One or two words for the top line: what state the dashboard is in."""
        if self.code == TIMEOUT:
            return "no answer"
        if self.is_connection_error:
            return "unreachable"
        return "key rejected" if self.is_auth_error else f"error {self.status}"


@dataclass(slots=True, frozen=True)
class UploadResult:
    source: str
    status: str
    chunks: int
    error: str | None


class ApplianceClient:
    """One aiohttp session per dashboard; open() and close() bracket its life on the app's loop."""

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float = POLL_TIMEOUT_S,
                 ca_cert: str | None = None) -> None:
        """`ca_cert`: a PEM file of the CA (or the self-signed certificate) an https server is
        verified against, instead of the system's trusted CAs."""
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._ssl = ssl.create_default_context(cafile=ca_cert) if ca_cert else True
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl)
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout,
                                                  connector=connector)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- reads -----------------------------------------------------------------------------------
    async def stats(self) -> dict:
        return await self._json("GET", "/admin/stats")

    async def metrics(self) -> str:
        return await self._text("GET", "/metrics")

    async def alerts(self) -> dict:
        """GET /admin/alerts: every alert rule instance, firing or ok."""
        return await self._json("GET", "/admin/alerts")

    async def tenants(self) -> list[dict]:
        return list((await self._json("GET", "/admin/tenants")).get("tenants", []))

    async def collections(self) -> list[dict]:
        return list((await self._json("GET", "/v1/collections")).get("collections", []))

    async def documents(self, collection: str) -> list[dict]:
        """The documents of one collection; an empty list when the collection does not exist (404)."""
        try:
            body = await self._json("GET", _documents_path(collection))
        except ApiError as exc:
            if exc.status == 404:
                return []
            raise
        return list(body.get("documents", []))

    async def traces(self, limit: int, order: str = "recent") -> dict:
        """The server's request traces (GET /admin/traces), newest or slowest first."""
        return await self._json("GET", "/admin/traces", params={"limit": str(limit), "order": order})

    async def models(self) -> dict:
        """GET /admin/models: the model versions, the canary split, rules and the latest events."""
        return await self._json("GET", "/admin/models")

    # --- actions ---------------------------------------------------------------------------------
    async def flush_cache(self) -> int:
        return int((await self._json("POST", "/admin/cache/flush")).get("flushed_blocks", 0))

    async def set_paused(self, paused: bool) -> dict:
        return await self._json("POST", "/admin/admission/pause" if paused else "/admin/admission/resume")

    async def promote_canary(self) -> dict:
        """The canary becomes live; the server refuses (400 invalid_state) when there is none."""
        return await self._json("POST", "/admin/models/promote")

    async def rollback(self, reason: str | None = None) -> dict:
        """Retire the canary, else bring the previous live version back (400 invalid_state: neither)."""
        return await self._json("POST", "/admin/models/rollback", json={"reason": reason} if reason else None)

    async def create_tenant(self, name: str) -> dict:
        return await self._json("POST", "/admin/tenants", json={"name": name})

    async def update_tenant(self, name: str, fields: dict) -> dict:
        """PATCH the tenant's limits and weight (None sends null: back to the server's default)."""
        return await self._json("PATCH", f"/admin/tenants/{quote(name, safe='')}", json=fields)

    async def create_key(self, tenant: str) -> str:
        body = await self._json("POST", "/admin/keys", json={"tenant": tenant, "role": "tenant"})
        return str(body["key"])

    async def upload(self, collection: str, source: str, data: bytes) -> UploadResult:
        """Upload one file (a multipart part named `file` whose filename is the document's source)."""
        form = aiohttp.FormData()
        form.add_field("file", data, filename=source, content_type="application/octet-stream")
        timeout = aiohttp.ClientTimeout(total=UPLOAD_TIMEOUT_S)
        body = await self._json("POST", _documents_path(collection), data=form, timeout=timeout)
        item = (body.get("results") or [{}])[0]
        return UploadResult(str(item.get("source", source)), str(item.get("status", "failed")),
                            int(item.get("chunks") or 0), item.get("error"))

    # --- plumbing --------------------------------------------------------------------------------
    async def _json(self, method: str, path: str, **kwargs) -> dict:
        status, text = await self._request(method, path, **kwargs)
        body = _parse_json(text)
        if status >= 400:
            raise _status_error(status, body)
        if not isinstance(body, dict):
            raise ApiError(f"{path} answered {status} without a JSON object", status)
        return body

    async def _text(self, method: str, path: str) -> str:
        status, text = await self._request(method, path)
        if status >= 400:
            raise _status_error(status, _parse_json(text))
        return text

    async def _request(self, method: str, path: str, **kwargs) -> tuple[int, str]:
        await self.open()
        assert self._session is not None
        try:
            async with self._session.request(method, self.base_url + path, **kwargs) as response:
                return response.status, await response.text()
        except aiohttp.ClientConnectorCertificateError as exc:
            raise ApiError(f"cannot connect to {self.base_url}: its TLS certificate is not trusted "
                           f"({exc.certificate_error.verify_message or 'verification failed'}; "
                           "see --ca-cert)", code=UNREACHABLE) from None
        except aiohttp.ClientConnectorError as exc:
            raise ApiError(f"cannot connect to {self.base_url} ({_reason(exc)})", code=UNREACHABLE) from None
        except asyncio.TimeoutError:
            timeout = self._timeout.total if "timeout" not in kwargs else kwargs["timeout"].total
            raise ApiError(f"{self.base_url} did not answer {method} {path} within {timeout:g} s",
                           code=TIMEOUT) from None
        except aiohttp.ClientError as exc:
            raise ApiError(f"lost the connection to {self.base_url} ({type(exc).__name__})",
                           code=UNREACHABLE) from None


def _documents_path(collection: str) -> str:
    return f"/v1/collections/{quote(collection, safe='')}/documents"


def _parse_json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _status_error(status: int, body: object) -> ApiError:
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    param = error.get("param") if isinstance(error, dict) else None
    if status == 401:
        return ApiError(f"the API key was rejected (401): {message or 'unauthorized'}", status, code)
    if status == 403:
        return ApiError(f"this key may not use the admin API (403): {message or 'forbidden'}", status, code)
    return ApiError(f"{message or 'request failed'} ({status})", status, code,
                    param if isinstance(param, str) else None)


def _reason(exc: aiohttp.ClientConnectorError) -> str:
    """A short, stable reason: 'connection refused' rather than the socket library's full sentence."""
    os_error = exc.os_error
    if isinstance(os_error, ConnectionRefusedError):
        return "connection refused"
    if os_error is not None and os_error.strerror:
        return os_error.strerror.lower()
    return "no route to the server"
