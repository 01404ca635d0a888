"""The top line (server, model, status, uptime), the connection banner, and the last action's outcome."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from tui import format as fmt
from tui.stats import StatsSnapshot

OFFLINE = "#e06c75"
STATUS_COLORS = {"ready": "#98c379", "paused": "#e5c07b", "loading": "#e5c07b", "draining": "#e06c75"}


class StatusBar(Static):
    def __init__(self, url: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.url = url

    def on_mount(self) -> None:
        self.update(Text.assemble(("connecting", Style(bold=True)), " · ", self.url))

    def show(self, stats: StatsSnapshot) -> None:
        color = STATUS_COLORS.get(stats.status, "#e06c75")
        self.update(Text.assemble(("● ", Style(color=color)), (stats.status, Style(color=color, bold=True)),
                                  f" · up {fmt.duration(stats.uptime_s)} · ", (stats.model, Style(bold=True)),
                                  " · ", self.url))


    def show_problem(self, label: str) -> None:
        """The last numbers stay on the panels (dimmed); the top line no longer vouches for them."""
        red = Style(color=OFFLINE, bold=True)
        self.update(Text.assemble(("● ", red), (label, red), " · ", self.url))


class ConnectionBanner(Static):
    """Hidden while the last poll succeeded; otherwise says plainly what is wrong and that it retries."""

    message = ""

    def show_error(self, message: str, interval_s: float | None) -> None:
        retry = f" · retrying every {interval_s:g}s" if interval_s else ""
        self.message = message
        self.update(f"✖ {message}{retry}")
        self.add_class("-visible")

    def clear_error(self) -> None:
        self.message = ""
        self.remove_class("-visible")


class MessageLine(Static):
    """The outcome of the last action: ✔ what happened, or ✖ why it did not."""

    message = ""

    def on_mount(self) -> None:
        self.update(Text("? shows every key and what the panels mean", Style(dim=True)))

    def confirm(self, message: str) -> None:
        self.message = message
        self.set_classes("-ok")
        self.update(Text.assemble(("✔ ", Style(bold=True)), message))

    def error(self, message: str) -> None:
        self.message = message
        self.set_classes("-error")
        self.update(Text.assemble(("✖ ", Style(bold=True)), message))
