"""A bar chart of recent samples, newest at the right edge, one sample per column.

Unlike a sparkline that squeezes the whole history into its width, each column here is one poll,
so the time axis does not stretch as history grows, and the scale starts at zero (a flat line of
small values reads as small, not as mid-height).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

BARS = " ▁▂▃▄▅▆▇█"
HISTORY = 600


def bar_rows(values: list[float], width: int, height: int, top: float) -> list[str]:
    """Rows of block characters, top row first; values are right-aligned in `width` columns."""
    shown = values[-width:] if width > 0 else []
    pad = width - len(shown)
    levels = len(BARS) - 1
    rows = []
    for row in range(height - 1, -1, -1):  # row 0 is the bottom line
        chars = [" "] * pad
        for value in shown:
            eighths = round(max(0.0, min(value / top, 1.0)) * height * levels) if top > 0 else 0
            if value > 0 and eighths == 0:
                eighths = 1  # anything above zero is visible
            fill = eighths - row * levels
            chars.append(BARS[max(0, min(fill, levels))])
        rows.append("".join(chars))
    return rows


class TimeSeries(Widget):
    """Samples pushed with `push()`; `ceiling` fixes the top of the scale (None: the largest shown)."""

    DEFAULT_CSS = """
    TimeSeries { height: 1fr; min-height: 1; }
    """

    def __init__(self, color: str, ceiling: float | None = None, *, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.color = color
        self.ceiling = ceiling
        self.values: deque[float] = deque(maxlen=HISTORY)

    def push(self, value: float) -> None:
        self.values.append(value)
        self.refresh()

    def extend(self, values: Iterable[float]) -> None:
        self.values.extend(values)
        self.refresh()

    def render(self) -> Text:
        width, height = self.size.width, max(self.size.height, 1)
        values = list(self.values)[-width:] if width else []
        top = self.ceiling if self.ceiling is not None else max(values, default=0.0)
        rows = bar_rows(values, width, height, top)
        return Text("\n".join(rows), style=Style(color=self.color), no_wrap=True, end="")
