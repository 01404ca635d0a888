"""Per-tenant limits: requests per minute (sliding window), tokens per UTC day, admission caps.

A rate-limited client should come back soon (429, Retry-After, x-should-retry: true); an exhausted
daily quota will not recover before midnight UTC (429, x-should-retry: false). The quota counts the
tokens of today's finished requests (UsageLedger, in memory) plus those of the tenant's requests in
flight, so it is checked before a request starts and again after every step while it runs.

Admin keys act as the tenant `admin`: they are not rate- or quota-limited, and only limits set on the
`admin` tenant itself cap their concurrency (the server defaults are for tenants, not the operator).
"""

from __future__ import annotations

import math
import time
from collections import deque
from datetime import datetime, timedelta, timezone

from appliance.server.admission import TenantCaps
from appliance.server.config import ServerConfig
from appliance.server.control import UsageLedger
from appliance.server.errors import ApiError
from appliance.server.store import Principal, Tenant

WINDOW_S = 60.0


class TenantLimits:
    def __init__(self, usage: UsageLedger) -> None:
        self.usage = usage
        self._recent: dict[str, deque[float]] = {}

    def check(self, tenant: Tenant | None, inflight_tokens: int) -> None:
        """Before a request: 429 when the tenant's quota is spent or its rate limit reached."""
        if tenant is None:
            return
        if self.quota_reached(tenant, inflight_tokens):
            raise quota_error(tenant, self.usage.used(tenant.name) + inflight_tokens)
        self._check_rate(tenant)

    def quota_reached(self, tenant: Tenant | None, inflight_tokens: int) -> bool:
        quota = None if tenant is None else tenant.token_quota_per_day
        return quota is not None and self.usage.used(tenant.name) + inflight_tokens >= quota

    def _check_rate(self, tenant: Tenant) -> None:
        limit = tenant.requests_per_minute
        if limit is None:
            return
        now = time.monotonic()
        recent = self._recent.setdefault(tenant.name, deque())
        while recent and now - recent[0] >= WINDOW_S:
            recent.popleft()
        if len(recent) >= limit:
            wait = max(1, math.ceil(WINDOW_S - (now - recent[0]))) if recent else int(WINDOW_S)
            raise ApiError(429, f"rate limit of {limit} requests per minute reached for tenant "
                                f"{tenant.name!r}", None, "rate_limit_exceeded",
                           {"Retry-After": str(wait), "x-should-retry": "true"})
        recent.append(now)


def quota_error(tenant: Tenant, used: int) -> ApiError:
    quota = tenant.token_quota_per_day
    return ApiError(429, f"tenant {tenant.name!r} has used its daily quota of {quota} tokens ({used} used, "
                         f"counting requests in flight); it resets at 00:00 UTC", None, "insufficient_quota",
                    {"Retry-After": str(_seconds_to_midnight()), "x-should-retry": "false"})


def caps_for(principal: Principal, tenant: Tenant | None, config: ServerConfig) -> TenantCaps:
    """The tenant's own admission limits, else the server defaults (never for the admin tenant)."""
    concurrent = None if tenant is None else tenant.max_concurrent_requests
    queued = None if tenant is None else tenant.max_queued_tokens
    if principal.is_admin:
        return TenantCaps(concurrent, queued)
    return TenantCaps(config.default_max_concurrent_requests if concurrent is None else concurrent,
                      config.default_max_queued_tokens_per_tenant if queued is None else queued)


def _seconds_to_midnight() -> int:
    now = datetime.now(timezone.utc)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, math.ceil((midnight - now).total_seconds()))
