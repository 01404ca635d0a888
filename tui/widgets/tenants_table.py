"""Tenants table: requests, tokens, cached (prefix-hit) tokens and today's share of the token quota."""

from __future__ import annotations

from tui import format as fmt
from tui.stats import TenantRow
from tui.widgets.keyed_table import KeyedTable


def tenant_cells(row: TenantRow) -> tuple[str, ...]:
    return (row.name, fmt.count(row.requests), fmt.count(row.tokens), fmt.count(row.cached_tokens),
            fmt.percent(row.quota_used, 0))


class TenantsTable(KeyedTable):
    COLUMNS = (("tenant", "tenant", False), ("req", "requests", True), ("tokens", "tokens", True),
               ("cached", "cached", True), ("quota", "quota", True))

    def on_mount(self) -> None:
        self.border_title = "Tenants"

    def show(self, rows: list[TenantRow]) -> None:
        self.sync([(row.name, tenant_cells(row)) for row in rows])
