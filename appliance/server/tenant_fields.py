"""A tenant's settable fields and their one set of rules, shared by the store, HTTP and the CLI.

Limits are integers or None. For the daily token quota and requests per minute None means
unlimited; for the concurrency and queued-token limits None means the server's default
(`default_max_concurrent_requests`, `default_max_queued_tokens_per_tenant`). The weight is the
tenant's share in the fair scheduler relative to other tenants: a positive finite number, bounded so
that a virtual clock divided by it stays a sane float.
"""

from __future__ import annotations

import math

# field -> smallest allowed value (0 for a quota/rate means "nothing allowed", which is meaningful;
# zero concurrent requests or queued tokens would only be a confusing way to say the same).
LIMIT_FIELDS: dict[str, int] = {
    "token_quota_per_day": 0,
    "requests_per_minute": 0,
    "max_concurrent_requests": 1,
    "max_queued_tokens": 1,
}
FIELDS = (*LIMIT_FIELDS, "weight")
MIN_WEIGHT = 0.001
MAX_WEIGHT = 1000.0
DEFAULT_WEIGHT = 1.0
_MAX_INT = 2**62


class TenantFieldError(ValueError):
    """A value a tenant field cannot take; `param` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def check_field(name: str, value: object) -> int | float | None:
    """The value to store for `name`, or TenantFieldError."""
    if name == "weight":
        return check_weight(value)
    if name not in LIMIT_FIELDS:
        raise TenantFieldError(name, f"unknown tenant field {name!r}; known: {', '.join(FIELDS)}")
    if value is None:
        return None
    minimum = LIMIT_FIELDS[name]
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= _MAX_INT:
        meaning = "unlimited" if minimum == 0 else "the server default"
        raise TenantFieldError(name, f"{name} must be an integer >= {minimum} (or null: {meaning})")
    return value


def check_weight(value: object) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not MIN_WEIGHT <= value <= MAX_WEIGHT:
        raise TenantFieldError("weight", f"weight must be a number from {MIN_WEIGHT:g} to {MAX_WEIGHT:g}")
    return float(value)


def check_fields(fields: dict[str, object]) -> dict[str, int | float | None]:
    return {name: check_field(name, value) for name, value in fields.items()}
