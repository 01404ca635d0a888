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
        # No cell padding: the one-space gaps are part of the cells (see _cell), so five columns fit
        # in the 38 cells a table gets at 80 columns.
        super().__init__(id=id, cursor_type="row", zebra_stripes=False, show_cursor=False, cell_padding=0)
        self._keys: list[str] = []

    def on_mount(self) -> None:
        for i, (label, key, right) in enumerate(self.COLUMNS):
            self.add_column(_cell(label, right, i == 0), key=key)

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
                for i, ((_, column, right), value) in enumerate(zip(self.COLUMNS, cells, strict=True)):
                    self.update_cell(key, column, _cell(value, right, i == 0), update_width=True)
            return
        highlighted = self._keys[self.cursor_row] if 0 <= self.cursor_row < len(self._keys) else None
        self.clear()
        for key, cells in rows:
            self.add_row(*(_cell(v, right, i == 0)
                           for i, ((_, _, right), v) in enumerate(zip(self.COLUMNS, cells, strict=True))),
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
        return [[str(c).strip() for c in self.get_row_at(i)] for i in range(self.row_count)]


def _cell(value: str, right: bool, first: bool) -> Text:
    """Every column but the first carries the one-space gap on its left."""
    return Text(value if first else f" {value}", justify="right" if right else "left")
