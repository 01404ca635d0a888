"""Reading request bodies: JSON within a size bound, and typed field getters that fail as 400s.

Every getter names the offending field in the error's `param`, so a client sees exactly which
field was wrong and why, in the OpenAI error shape.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from appliance.server.errors import ApiError, bad_request

_MISSING = object()


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is larger than the limit of {limit} bytes", None, "payload_too_large")


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    data = bytearray()
    async for chunk in request.content.iter_any():
        data += chunk
        if len(data) > limit:
            raise too_large(limit)
    return bytes(data)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: web.Request, limit: int) -> Body:
    raw = await read_body(request, limit)
    if not raw.strip():
        raise bad_request("the request body is empty; send a JSON object", code="invalid_json")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"could not parse the JSON body: {exc}", code="invalid_json") from None
    except RecursionError:
        raise bad_request("the JSON body is nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    _check_unicode(data)
    return Body(data)


def _check_unicode(data: dict) -> None:
    """Refuse lone UTF-16 surrogates (`"\\ud800"`): valid JSON, but no tokenizer can encode them."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request("the JSON body contains an unpaired surrogate escape (\\ud800-\\udfff); "
                          "send valid Unicode text", code="invalid_json") from None


def _type_error(name: str, expected: str) -> ApiError:
    return bad_request(f"'{name}' must be {expected}", param=name, code="invalid_type")


class Body:
    def __init__(self, data: dict) -> None:
        self.data = data

    def raw(self, name: str, default: Any = None) -> Any:
        value = self.data.get(name, default)
        return default if value is None else value

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def string(self, name: str, default: Any = _MISSING, max_len: int = 1 << 20,
               allow_empty: bool = False) -> Any:
        value = self.data.get(name)
        if value is None:
            if default is _MISSING:
                raise bad_request(f"'{name}' is required", param=name, code="missing_required_parameter")
            return default
        if not isinstance(value, str):
            raise _type_error(name, "a string")
        if not allow_empty and not value.strip():
            raise bad_request(f"'{name}' must not be empty", param=name, code="invalid_value")
        if len(value) > max_len:
            raise bad_request(f"'{name}' is longer than {max_len} characters", param=name,
                              code="invalid_value")
        return value

    def integer(self, name: str, default: Any, minimum: int | None = None,
                maximum: int | None = None) -> Any:
        value = self.data.get(name)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise _type_error(name, "an integer")
        _check_range(name, value, minimum, maximum)
        return value

    def number(self, name: str, default: Any, minimum: float | None = None,
               maximum: float | None = None) -> Any:
        value = self.data.get(name)
        if value is None:
            return default
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise _type_error(name, "a number")
        _check_range(name, value, minimum, maximum)
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.data.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise _type_error(name, "a boolean")
        return value

    def obj(self, name: str) -> dict:
        value = self.data.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise _type_error(name, "an object")
        return value

    def string_list(self, name: str, max_items: int, max_len: int = 1024) -> list[str]:
        value = self.data.get(name)
        if value is None:
            return []
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
            raise _type_error(name, "a non-empty string or a list of non-empty strings")
        if len(items) > max_items or any(len(s) > max_len for s in items):
            raise bad_request(f"'{name}' may hold at most {max_items} strings of at most {max_len} "
                              "characters", param=name, code="invalid_value")
        return items


def _check_range(name: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise bad_request(f"'{name}' must be >= {minimum}, got {value}", param=name, code="invalid_value")
    if maximum is not None and value > maximum:
        raise bad_request(f"'{name}' must be <= {maximum}, got {value}", param=name, code="invalid_value")
