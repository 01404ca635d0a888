"""Tenants table: requests, tokens, cached (prefix-hit) tokens, today's share of the token quota and
today's cost (at the server's configured prices; a dash when it has none)."""

from __future__ import annotations

from tui import format as fmt
from tui.stats import TenantRow
from tui.widgets.keyed_table import KeyedTable


def tenant_cells(row: TenantRow) -> tuple[str, ...]:
    return (row.name, fmt.count(row.requests), fmt.count(row.tokens), fmt.count(row.cached_tokens),
            fmt.percent(row.quota_used, 0), fmt.money(row.cost_today))


class TenantsTable(KeyedTable):
    COLUMNS = (("tenant", "tenant", False), ("req", "requests", True), ("tokens", "tokens", True),
               ("cached", "cached", True), ("quota", "quota", True), ("cost", "cost", True))

    def on_mount(self) -> None:
        self.border_title = "Tenants"

    def show(self, rows: list[TenantRow], currency: str | None = None) -> None:
        priced = currency and any(row.cost_today is not None for row in rows)
        self.border_title = f"Tenants · cost/d in {currency}" if priced else "Tenants"
        self.sync([(row.name, tenant_cells(row)) for row in rows])
