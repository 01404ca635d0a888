"""Alerts strip under the top line: every firing alert, worst first, one line each; hidden while none
fires (it then holds one calm line), shown dimmed when the alerts could not be read.

A firing alert reads `● PAGE ttft_burn_rate window=5m/1h · 3m12s · <the server's summary>`: how long
it has fired comes from the alert's `since` and the panel's clock (a test passes a fixed one). The
strip grows to MAX_LINES lines and says how many more fire beyond them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from tui import format as fmt
from tui.alerts import AlertRow

MAX_LINES = 3
COLORS = {"page": "#e06c75", "ticket": "#e5c07b", "warning": "#e5c07b"}
CALM = "#98c379"


def firing_line(alert: AlertRow, now: float) -> Text:
    color = COLORS.get(alert.severity, "#e06c75")
    line = Text(no_wrap=True, overflow="ellipsis", end="")
    line.append("● ", Style(color=color))
    line.append(alert.severity.upper(), Style(color=color, bold=True))
    line.append(f" {alert.name}", Style(bold=True))
    if alert.labels:
        line.append(f" {alert.label_text}")
    line.append(f" · {fmt.duration(max(0.0, now - alert.since))} · ", Style(dim=True))
    line.append(alert.summary)
    return line


def alerts_text(alerts: list[AlertRow], now: float) -> Text:
    firing = [a for a in alerts if a.firing]
    if not firing:
        text = Text("✔ no alerts firing", Style(color=CALM), no_wrap=True, end="")
        text.append(f" · {len(alerts)} rule instance{'s' if len(alerts) != 1 else ''} ok", Style(dim=True))
        return text
    shown = firing if len(firing) <= MAX_LINES else firing[:MAX_LINES - 1]
    text = Text("\n", no_wrap=True, overflow="ellipsis", end="").join(firing_line(a, now) for a in shown)
    if len(shown) < len(firing):
        text.append(f"\n… {len(firing) - len(shown)} more firing (GET /admin/alerts lists them all)",
                    Style(dim=True))
    return text


class AlertsPanel(Static):
    text = ""
    """The strip as plain text (what an operator reads)."""

    def __init__(self, clock: Callable[[], float] = time.time, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.clock = clock
        self._shown = Text(fmt.DASH, end="")  # the last alerts the server gave

    def on_mount(self) -> None:
        self.update(Text("alerts " + fmt.DASH, Style(dim=True)))

    def show(self, alerts: list[AlertRow]) -> None:
        """Shown only while something fires (the calm line is kept for tests and stale states)."""
        self._shown = alerts_text(alerts, self.clock())
        self.set_class(any(a.firing for a in alerts), "-firing")
        self.remove_class("-stale")
        self.update(self._shown)
        self.text = self._shown.plain

    def show_problem(self, problem: str) -> None:
        """The last alerts stay listed, dimmed, under a line that says they are not fresh."""
        text = Text(f"alerts not updated: {problem}\n", Style(dim=True), no_wrap=True, overflow="ellipsis",
                    end="")
        shown = self._shown.copy()
        shown.stylize(Style(dim=True))
        text.append_text(shown)
        self.add_class("-stale")
        self.update(text)
        self.text = text.plain
