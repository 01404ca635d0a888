"""Per-tenant limits: requests per minute (sliding window, in memory) and tokens per UTC day (SQLite).

A rate-limited client should come back soon (429, Retry-After, x-should-retry: true); an exhausted
daily quota will not recover before midnight UTC (429, x-should-retry: false).
"""

from __future__ import annotations

import math
import time
from collections import deque
from datetime import datetime, timedelta, timezone

from appliance.server.errors import ApiError
from appliance.server.store import ControlStore, Tenant

WINDOW_S = 60.0


class TenantLimits:
    def __init__(self, store: ControlStore) -> None:
        self.store = store
        self._recent: dict[str, deque[float]] = {}

    def check(self, tenant: Tenant | None) -> None:
        if tenant is None:
            return
        self._check_quota(tenant)
        self._check_rate(tenant)

    def _check_quota(self, tenant: Tenant) -> None:
        quota = tenant.token_quota_per_day
        if quota is None:
            return
        used = self.store.tokens_today(tenant.name)
        if used >= quota:
            raise ApiError(429, f"tenant {tenant.name!r} has used its daily quota of {quota} tokens "
                                f"({used} used); it resets at 00:00 UTC", None, "insufficient_quota",
                           {"Retry-After": str(_seconds_to_midnight()), "x-should-retry": "false"})

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


def _seconds_to_midnight() -> int:
    now = datetime.now(timezone.utc)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, math.ceil((midnight - now).total_seconds()))
