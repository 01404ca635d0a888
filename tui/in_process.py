"""The dashboard as `appliance demo` opens it: inside the appliance's own process, so q stops both.

The demo runs its server and this dashboard on one event loop and stops the server once the
dashboard exits. That is said on screen before anyone presses q: in the footer (q "Quit + stop") and
on the message line until the first action replaces it.
"""

from __future__ import annotations

from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType

from tui.app import DashboardApp
from tui.widgets.status_bar import MessageLine

QUIT_NOTE = "demo: q quits the dashboard and stops this appliance (it runs in this process)"


class InProcessDashboardApp(DashboardApp):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("q", "quit", "Quit + stop")]

    def on_mount(self) -> None:  # Textual also runs DashboardApp.on_mount (it starts the polling)
        self.query_one(MessageLine).update(Text(QUIT_NOTE, Style(color="#e5c07b")))
