"""One poll of the appliance: every read the panels need, fetched concurrently.

/admin/stats decides whether the server is reachable and the key valid; the other reads (tenants,
collections and their documents, /metrics) only enrich the panels, so they are fetched beside it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from tui.client import ApiError, ApplianceClient
from tui.latency import Histogram, parse_histograms
from tui.stats import CollectionRow, StatsSnapshot, TenantRow, collection_row, parse_stats, tenant_rows

MAX_COLLECTIONS_WITH_STATUS = 50  # beyond this, a poll would cost too many requests


@dataclass(slots=True)
class PollResult:
    stats: StatsSnapshot
    tenants: list[TenantRow]
    collections: list[CollectionRow]
    histograms: dict[str, Histogram] = field(default_factory=dict)
    started_at: float = 0.0  # time.monotonic() when the poll began and when its answers were in
    finished_at: float = 0.0


async def poll_once(client: ApplianceClient) -> PollResult:
    """Raises ApiError when the appliance cannot be read, ValueError when its stats make no sense."""
    started = time.monotonic()
    stats_doc, tenants, collections, metrics = await asyncio.gather(
        client.stats(), client.tenants(), _collections(client), _metrics(client))
    stats = parse_stats(stats_doc)
    return PollResult(stats, tenant_rows(stats.usage, tenants), collections, parse_histograms(metrics),
                      started, time.monotonic())


async def _collections(client: ApplianceClient) -> list[CollectionRow]:
    infos = await client.collections()
    shown = infos[:MAX_COLLECTIONS_WITH_STATUS]
    documents = await asyncio.gather(*(client.documents(str(info["name"])) for info in shown))
    rows = [collection_row(info, docs) for info, docs in zip(shown, documents, strict=True)]
    return rows + [collection_row(info, []) for info in infos[len(shown):]]


async def _metrics(client: ApplianceClient) -> str:
    """/metrics answers 503 while the model loads; the latency panel then simply has nothing yet."""
    try:
        return await client.metrics()
    except ApiError as exc:
        if exc.status is not None and exc.status >= 500:
            return ""
        raise
