"""One poll of the appliance: every read the panels need, fetched concurrently.

/admin/stats decides whether the server is reachable and the key valid; the other reads (tenants,
collections and their documents, /metrics) only enrich the panels, so they are fetched beside it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from tui.alerts import AlertRow, parse_alerts
from tui.client import ApiError, ApplianceClient
from tui.latency import Histogram, parse_histograms
from tui.stats import CollectionRow, StatsSnapshot, TenantRow, collection_row, parse_stats, tenant_rows

MAX_COLLECTIONS_WITH_STATUS = 50  # beyond this, a poll would cost too many requests


@dataclass(slots=True)
class PollResult:
    """One poll. A part other than the stats that failed is None, with the reason in `problems`:
    its panel keeps its previous rows and says why they are not fresh."""

    stats: StatsSnapshot
    tenants: list[TenantRow] | None
    collections: list[CollectionRow] | None
    histograms: dict[str, Histogram] | None
    problems: dict[str, str] = field(default_factory=dict)  # part -> why it is not updated
    started_at: float = 0.0  # time.monotonic() when the poll began and when its answers were in
    finished_at: float = 0.0
    alerts: list[AlertRow] | None = None


async def poll_once(client: ApplianceClient) -> PollResult:
    """Raises ApiError when /admin/stats cannot be read, ValueError when it makes no sense."""
    started = time.monotonic()
    stats_doc, tenants, collections, metrics, alerts = await asyncio.gather(
        client.stats(), client.tenants(), _collections(client), client.metrics(), _alerts(client),
        return_exceptions=True)
    stats = parse_stats(_value(stats_doc))
    problems: dict[str, str] = {}
    tenants = _optional("tenants", tenants, problems)
    metrics = _optional("latency", metrics, problems)
    return PollResult(stats, None if tenants is None else tenant_rows(stats.usage, tenants, stats.cost),
                      _optional("collections", collections, problems),
                      None if metrics is None else parse_histograms(metrics), problems,
                      started, time.monotonic(), _optional("alerts", alerts, problems))


def _value(result: object) -> object:
    if isinstance(result, BaseException):
        raise result
    return result


def _optional(part: str, result: object, problems: dict[str, str]) -> object:
    """The result of a secondary read, or None with the reason noted (an unexpected error raises)."""
    if isinstance(result, (ApiError, ValueError, KeyError, TypeError)):
        problems[part] = result.message if isinstance(result, ApiError) else f"unreadable answer: {result}"
        return None
    return _value(result)


async def _alerts(client: ApplianceClient) -> list[AlertRow]:
    return parse_alerts(await client.alerts())


async def _collections(client: ApplianceClient) -> list[CollectionRow]:
    infos = await client.collections()
    shown = infos[:MAX_COLLECTIONS_WITH_STATUS]
    documents = await asyncio.gather(*(client.documents(str(info["name"])) for info in shown))
    rows = [collection_row(info, docs) for info, docs in zip(shown, documents, strict=True)]
    return rows + [collection_row(info, []) for info in infos[len(shown):]]

