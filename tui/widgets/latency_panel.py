"""Latency panel: TTFT and time per output token, p50 and p95 of the requests of the last minute."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from tui import format as fmt
from tui.latency import Quantiles

HEADER = Style(dim=True)


def latency_text(ttft: Quantiles, tpot: Quantiles) -> Text:
    text = Text(f"{'':<6}{'p50':>9}{'p95':>9}{'n':>7}\n", HEADER, end="")
    for i, (label, q) in enumerate((("TTFT", ttft), ("TPOT", tpot))):
        text.append(f"{label:<6}", Style(bold=True))
        text.append(f"{fmt.seconds(q.p50):>9}{fmt.seconds(q.p95):>9}{fmt.count(q.num_samples):>7}")
        if i == 0:
            text.append("\n")
    return text


class LatencyPanel(Static):
    text = ""
    """The panel's numbers as plain text."""

    def on_mount(self) -> None:
        self.border_title = "Latency · last minute"
        empty = Quantiles(None, None, 0)
        self.show(empty, empty)

    def show(self, ttft: Quantiles, tpot: Quantiles) -> None:
        text = latency_text(ttft, tpot)
        self.update(text)
        self.text = text.plain
