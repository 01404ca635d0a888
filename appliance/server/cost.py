"""What each tenant's usage costs: configured prices over tokens and engine time, per UTC day.

A request that reached the engine is charged for its prompt tokens computed, its prompt tokens served
from the prefix cache (usually cheaper), its generated tokens (all per 1k) and its engine-seconds.
Engine-seconds split the wall time the server had inference requests in flight evenly among the
requests in flight at each moment (a virtual clock, as fair queueing keeps one): one request alone
is charged its whole duration, two overlapping ones half each while they overlap, and the charges
add up to the time the engine was busy, on whatever device it runs (GPU-seconds on CUDA, the
engine's CPU cores on a CPU). Waits in the queue are in flight too: a busy server charges them.

The ledger is in memory: today's costs count from midnight UTC or from the server's start, whichever
is later; /metrics exports running totals (counters) so Prometheus keeps the history.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from appliance.server.quality_stats import MetricFamily
from appliance.server.store import utc_day

if TYPE_CHECKING:
    from appliance.server.config import ServerConfig

DAYS_KEPT = 7


@dataclass(slots=True, frozen=True)
class Prices:
    per_1k_prompt: float = 0.0  # prompt tokens computed
    per_1k_cached: float = 0.0  # prompt tokens served from the prefix cache
    per_1k_generated: float = 0.0
    per_engine_second: float = 0.0
    currency: str = "USD"

    @classmethod
    def from_config(cls, config: ServerConfig) -> Prices:
        return cls(config.price_per_1k_prompt_tokens, config.price_per_1k_cached_tokens,
                   config.price_per_1k_generated_tokens, config.price_per_engine_second, config.cost_currency)

    def to_dict(self) -> dict:
        return {"per_1k_prompt_tokens": self.per_1k_prompt, "per_1k_cached_tokens": self.per_1k_cached,
                "per_1k_generated_tokens": self.per_1k_generated, "per_engine_second": self.per_engine_second}


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0  # computed (prefix-cache misses)
    cached_tokens: int = 0
    generated_tokens: int = 0
    engine_seconds: float = 0.0

    def add(self, other: Usage) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def cost(self, prices: Prices) -> float:
        return (self.prompt_tokens * prices.per_1k_prompt + self.cached_tokens * prices.per_1k_cached
                + self.generated_tokens * prices.per_1k_generated) / 1000.0 \
            + self.engine_seconds * prices.per_engine_second

    def to_dict(self, prices: Prices) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens,
                "generated_tokens": self.generated_tokens, "engine_seconds": round(self.engine_seconds, 6),
                "cost": self.cost(prices)}


class EngineClock:
    """Virtual time that advances at 1/n of the wall clock while n requests are in flight."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.num_active = 0
        self.virtual = 0.0
        self.last = clock()

    def _advance(self) -> float:
        now = self.clock()
        if self.num_active:
            self.virtual += (now - self.last) / self.num_active
        self.last = now
        return self.virtual

    def begin(self) -> float:
        """A request enters; returns its start mark for end()."""
        mark = self._advance()
        self.num_active += 1
        return mark

    def end(self, mark: float) -> float:
        """The request that began at `mark` leaves; returns its engine-seconds."""
        seconds = self._advance() - mark
        self.num_active -= 1
        return seconds


class CostLedger:
    """Usage and cost per tenant: running totals since start, and per UTC day for the last week."""

    def __init__(self, prices: Prices) -> None:
        self.prices = prices
        self.clock = EngineClock()
        self.totals: dict[str, Usage] = {}
        self.days: dict[str, dict[str, Usage]] = {}  # UTC day -> tenant -> usage

    def record(self, tenant: str, usage: Usage, day: str | None = None) -> None:
        day = day or utc_day()
        self.totals.setdefault(tenant, Usage()).add(usage)
        self.days.setdefault(day, {}).setdefault(tenant, Usage()).add(usage)
        for old in sorted(self.days)[:-DAYS_KEPT]:
            del self.days[old]

    def snapshot(self, day: str | None = None) -> dict:
        """The "cost" object of /admin/stats: prices and each tenant's usage and cost that day."""
        day = day or utc_day()
        tenants = self.days.get(day, {})
        return {"currency": self.prices.currency, "day": day, "prices": self.prices.to_dict(),
                "tenants": {name: tenants[name].to_dict(self.prices) for name in sorted(tenants)}}

    def metric_families(self, day: str | None = None) -> list[MetricFamily]:
        today = self.days.get(day or utc_day(), {})
        names = sorted(self.totals)
        kinds = ("prompt", "cached", "generated")
        tokens = [("", {"tenant": n, "kind": k}, float(getattr(self.totals[n], f"{k}_tokens")))
                  for n in names for k in kinds]
        return [
            MetricFamily("tenant_cost_total", "counter",
                         f"Cost of each tenant's usage since the server started, in {self.prices.currency}.",
                         [("", {"tenant": n}, self.totals[n].cost(self.prices)) for n in names]),
            MetricFamily("tenant_cost_today", "gauge",
                         f"Cost of each tenant's usage today (UTC, since the server started), in "
                         f"{self.prices.currency}.",
                         [("", {"tenant": n}, today[n].cost(self.prices)) for n in sorted(today)]),
            MetricFamily("tenant_engine_seconds_total", "counter",
                         "Engine-seconds charged to each tenant (busy time split among requests in flight).",
                         [("", {"tenant": n}, self.totals[n].engine_seconds) for n in names]),
            MetricFamily("tenant_tokens_total", "counter",
                         "Tokens charged to each tenant: prompt computed, prompt from the prefix cache, "
                         "generated.", tokens),
        ]
