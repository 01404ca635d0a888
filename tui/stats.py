"""Typed views of what the appliance serves: the /admin/stats document, tenants and collections.

The parse functions accept the JSON exactly as the server sends it (see docs/api.md and
appliance/server/admin_routes.py) and fail with ValueError when a field the panels need is absent
or of the wrong type, so a server the dashboard cannot read says so instead of showing zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class KvStats:
    block_size: int
    num_blocks: int
    used_blocks: int
    cached_blocks: int
    free_blocks: int
    usage_perc: float
    shared_blocks: int
    pinned_blocks: int
    waste_perc: float | None = None  # of the slots live requests hold, the share no token fills yet
    memory_share: float | None = None  # the KV pool's share of the engine's memory (weights + KV)


@dataclass(slots=True, frozen=True)
class PrefixStats:
    query_tokens: int
    hit_tokens: int
    hit_rate: float
    chunk_hit_tokens: int = 0  # kv_reuse "chunks": prompt tokens moved in from stored chunks
    chunk_recomputed_tokens: int = 0
    chunk_blocks: int = 0


@dataclass(slots=True, frozen=True)
class RequestStats:
    running: int
    waiting: int
    preemptions_total: int
    num_finished: int


@dataclass(slots=True, frozen=True)
class Throughput:
    prompt_tokens_per_s: float
    generation_tokens_per_s: float


@dataclass(slots=True, frozen=True)
class AdmissionStats:
    paused: bool
    draining: bool
    inflight: int
    queued_requests: int
    queued_tokens: int
    max_queued_requests: int
    max_queued_tokens: int


@dataclass(slots=True, frozen=True)
class TenantRow:
    """One line of the tenants table: usage from /admin/stats joined with the limits of /admin/tenants.

    `settings` is the tenant's entry of /admin/tenants (limits and weight; empty when the tenant is
    known from its usage only, e.g. just deleted): the edit form starts from it.
    """

    name: str
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    tokens_today: int = 0
    token_quota_per_day: int | None = None
    settings: dict = field(default_factory=dict, compare=False)
    cost_today: float | None = None  # None: the server has no prices configured

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def quota_used(self) -> float | None:
        """Share of today's token quota spent (0-1+), None for an unlimited tenant."""
        if not self.token_quota_per_day:
            return None
        return self.tokens_today / self.token_quota_per_day


@dataclass(slots=True, frozen=True)
class CollectionRow:
    name: str
    num_documents: int
    num_chunks: int
    status_counts: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class StatsSnapshot:
    model: str
    status: str
    uptime_s: float
    kv: KvStats
    prefix: PrefixStats
    requests: RequestStats
    throughput: Throughput
    admission: AdmissionStats
    usage: dict[str, dict] = field(default_factory=dict)
    cost: dict = field(default_factory=dict)  # the "cost" object: currency, prices, tenants' cost today


KV_COUNTS = ("block_size", "num_blocks", "used_blocks", "cached_blocks", "free_blocks")


def _int(section: dict, key: str) -> int:
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"'{key}' is {value!r}, not a number")
    return int(value)


def _float(section: dict, key: str) -> float:
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"'{key}' is {value!r}, not a number")
    return float(value)


def _section(doc: dict, key: str) -> dict:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"the stats have no '{key}' object")
    return value


def parse_stats(doc: object) -> StatsSnapshot:
    """Read one /admin/stats document; ValueError names the first field that is missing or wrong."""
    if not isinstance(doc, dict):
        raise ValueError("the stats are not a JSON object")
    try:
        return _parse_stats(doc)
    except KeyError as exc:
        raise ValueError(f"the stats lack the field {exc.args[0]!r}") from None


def _parse_stats(doc: dict) -> StatsSnapshot:
    kv, prefix, chunks = _section(doc, "kv"), _section(doc, "prefix_cache"), doc.get("chunk_cache") or {}
    req, rates, adm = _section(doc, "requests"), _section(doc, "throughput"), _section(doc, "admission")
    finished = req.get("finished") or {}
    return StatsSnapshot(
        model=str(doc.get("model") or ""),
        status=str(doc.get("status") or "unknown"),
        uptime_s=float(doc.get("uptime_s") or 0.0),
        kv=KvStats(*(_int(kv, k) for k in KV_COUNTS), _float(kv, "usage_perc"),
                   int(kv.get("shared_blocks", 0)), int(kv.get("pinned_blocks", 0)),
                   _optional_float(kv, "waste_perc"), _optional_float(kv, "memory_share")),
        prefix=PrefixStats(_int(prefix, "query_tokens"), _int(prefix, "hit_tokens"),
                           _float(prefix, "hit_rate"), int(chunks.get("hit_tokens", 0)),
                           int(chunks.get("recomputed_tokens", 0)), int(chunks.get("blocks", 0))),
        requests=RequestStats(_int(req, "running"), _int(req, "waiting"), _int(req, "preemptions_total"),
                              sum(int(n) for n in finished.values())),
        throughput=Throughput(_float(rates, "prompt_tokens_per_s"), _float(rates, "generation_tokens_per_s")),
        admission=AdmissionStats(bool(adm["paused"]), bool(adm.get("draining", False)),
                                 int(adm.get("inflight", 0)), _int(adm, "queued_requests"),
                                 _int(adm, "queued_tokens"), _int(adm, "max_queued_requests"),
                                 _int(adm, "max_queued_tokens")),
        usage=dict(doc.get("tenants") or {}),
        cost=dict(doc.get("cost") or {}),
    )


def _optional_float(section: dict, key: str) -> float | None:
    return None if section.get(key) is None else _float(section, key)


def tenant_rows(usage: dict[str, dict], tenants: list[dict], cost: dict | None = None) -> list[TenantRow]:
    """Every known tenant (usage or not), by name; usage of a tenant /admin/tenants lacks still shows.
    `cost` is the stats' "cost" object: today's cost per tenant, when the server has prices."""
    known = {str(t["name"]): t for t in tenants if "name" in t}
    cost = cost or {}
    priced = any(float(p or 0) > 0 for p in (cost.get("prices") or {}).values())
    costs = cost.get("tenants") or {}
    rows = []
    for name in sorted(set(known) | set(usage)):
        u = usage.get(name) or {}
        settings = dict(known.get(name) or {})
        today = float((costs.get(name) or {}).get("cost") or 0.0) if priced else None
        rows.append(TenantRow(name, int(u.get("requests") or 0), int(u.get("prompt_tokens") or 0),
                              int(u.get("cached_tokens") or 0), int(u.get("completion_tokens") or 0),
                              int(u.get("tokens_today") or 0), settings.get("token_quota_per_day"),
                              settings, today))
    return rows


def collection_row(info: dict, documents: list[dict]) -> CollectionRow:
    counts: dict[str, int] = {}
    for doc in documents:
        status = str(doc.get("status") or "unknown")
        counts[status] = counts.get(status, 0) + 1
    return CollectionRow(str(info["name"]), int(info.get("documents") or 0), int(info.get("chunks") or 0),
                         counts)
