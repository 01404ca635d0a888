"""Collections table (the admin tenant's): documents, chunks, and their ingest status."""

from __future__ import annotations

from tui import format as fmt
from tui.stats import CollectionRow
from tui.widgets.keyed_table import KeyedTable


def status_text(row: CollectionRow, upload: str | None = None) -> str:
    """'ready' when every document is; otherwise the counts that are not ('2 ingesting, 1 failed').
    An upload this dashboard is running into the collection comes first."""
    pending = [f"{n} {status}" for status, n in sorted(row.status_counts.items()) if status != "ready" and n]
    parts = ([upload] if upload else []) + pending
    if parts:
        return ", ".join(parts)
    return "ready" if row.num_documents else "empty"


class CollectionsTable(KeyedTable):
    COLUMNS = (("collection", "name", False), ("docs", "documents", True), ("chunks", "chunks", True),
               ("status", "status", False))

    def on_mount(self) -> None:
        self.border_title = "Collections · tenant admin"

    def show(self, rows: list[CollectionRow], uploads: dict[str, str]) -> None:
        """`uploads`: collection -> progress of an upload this dashboard runs ('uploading 2/5')."""
        cells = {row.name: (row.name, fmt.count(row.num_documents), fmt.count(row.num_chunks),
                            status_text(row, uploads.get(row.name))) for row in rows}
        for name, progress in uploads.items():  # a first upload creates its collection
            cells.setdefault(name, (name, "0", "0", progress))
        self.sync([(name, cells[name]) for name in sorted(cells)])
