"""A DataTable refreshed in place from keyed rows, so a poll never moves the operator's cursor."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import DataTable


class KeyedTable(DataTable):
    """Subclasses set COLUMNS: (label, key, right-aligned) triples."""

    COLUMNS: tuple[tuple[str, str, bool], ...] = ()
    EMPTY = "nothing yet"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False, show_cursor=False)
        self._keys: list[str] = []

    def on_mount(self) -> None:
        for label, key, right in self.COLUMNS:
            self.add_column(Text(label, justify="right" if right else "left"), key=key)

    def on_focus(self) -> None:
        self.show_cursor = True

    def on_blur(self) -> None:
        self.show_cursor = False

    def sync(self, rows: Sequence[tuple[str, Sequence[str]]]) -> None:
        """Replace the rows (key, cells) keeping the highlighted key; cells update in place when the
        keys are unchanged."""
        keys = [key for key, _ in rows]
        if keys == self._keys:
            for key, cells in rows:
                for (_, column, right), value in zip(self.COLUMNS, cells, strict=True):
                    self.update_cell(key, column, _cell(value, right), update_width=True)
            return
        highlighted = self._keys[self.cursor_row] if 0 <= self.cursor_row < len(self._keys) else None
        self.clear()
        for key, cells in rows:
            self.add_row(*(_cell(v, right) for (_, _, right), v in zip(self.COLUMNS, cells, strict=True)),
                         key=key)
        self._keys = keys
        if highlighted in keys:
            self.move_cursor(row=keys.index(highlighted))

    @property
    def highlighted_key(self) -> str | None:
        if 0 <= self.cursor_row < len(self._keys):
            return self._keys[self.cursor_row]
        return None

    def cells(self) -> list[list[str]]:
        """The table's text, row by row (what an operator reads)."""
        return [[str(c) for c in self.get_row_at(i)] for i in range(self.row_count)]


def _cell(value: str, right: bool) -> Text:
    return Text(value, justify="right" if right else "left")
