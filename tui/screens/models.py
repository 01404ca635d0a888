"""Model versions: the models panel on its own screen, polled like the dashboard.

It reads GET /admin/models; polling as in polled.py. A failed read (503 while the model loads) keeps
the last numbers, dimmed, and says why under them. Promote and roll back are the app's
keys (they work from the dashboard too); the app refreshes this screen after either.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.app import ComposeResult
from textual.widgets import Footer, Static

from tui.client import ApplianceClient
from tui.models import ModelsReport, parse_models
from tui.screens.polled import PolledScreen
from tui.widgets.models_panel import ModelsPanel


class ModelsScreen(PolledScreen[ModelsReport]):
    POLL_GROUP = "models"

    def __init__(self, client: ApplianceClient, poll_interval_s: float = 1.0, autopoll: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(client, poll_interval_s, autopoll)
        self.clock = clock

    def compose(self) -> ComposeResult:
        yield ModelsPanel(clock=self.clock, id="models")
        yield Static(id="models-message")
        yield Footer()

    async def fetch(self) -> ModelsReport:
        return parse_models(await self.client.models())

    def show(self, report: ModelsReport) -> None:
        panel = self.query_one(ModelsPanel)
        panel.show(report)
        panel.remove_class("-stale")
        self.query_one("#models-message", Static).update("")

    def show_problem(self, message: str) -> None:
        panel = self.query_one(ModelsPanel)
        panel.set_class(panel.report is not None, "-stale")
        self.query_one("#models-message", Static).update(f"not updated: {message}")


def promote_question(report: ModelsReport | None) -> str:
    """What promoting would do, as far as the last read tells (None: the read failed)."""
    if report is None:
        return "Promote the canary to live? It then takes all traffic."
    if report.canary is None:
        return "The server shows no canary to promote, so it will refuse. Send the promotion anyway?"
    return (f"Promote {report.canary} to live? It takes all traffic; {report.live} stays loaded for the "
            "rollback grace period, so b can bring it back.")


def rollback_question(report: ModelsReport | None) -> str:
    if report is None:
        return "Roll back? A canary is retired; without one the previous live version comes back."
    if report.canary is not None:
        return (f"Roll back the canary {report.canary}? It is retired and all traffic returns to "
                f"{report.live}.")
    if report.previous_live is not None:
        return f"Roll back to {report.previous_live}? It becomes live again and {report.live} is retired."
    return ("The server shows no canary and no previous live version, so it will refuse. "
            "Send the rollback anyway?")
