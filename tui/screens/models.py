"""Model versions: the models panel on its own screen, polled like the dashboard.

It reads GET /admin/models. Polling runs in a worker, never doubled up; `autopoll=False` leaves it to
the caller (`refresh_now()`), so snapshots do not depend on timing. A failed read (503 while the model
loads) keeps the last numbers, dimmed, and says why under them. Promote and roll back are the app's
keys (they work from the dashboard too); the app refreshes this screen after either.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Static

from tui.client import ApiError, ApplianceClient
from tui.models import ModelsReport, parse_models
from tui.widgets.models_panel import ModelsPanel


class ModelsScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Back to the dashboard")]

    def __init__(self, client: ApplianceClient, poll_interval_s: float = 1.0, autopoll: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.client = client
        self.poll_interval_s = poll_interval_s
        self.autopoll = autopoll
        self.clock = clock
        self._polling = False

    def compose(self) -> ComposeResult:
        yield ModelsPanel(clock=self.clock, id="models")
        yield Static(id="models-message")
        yield Footer()

    def on_mount(self) -> None:
        if self.autopoll:
            self.poll()
            self.set_interval(self.poll_interval_s, self.poll)

    def action_close(self) -> None:
        self.dismiss(None)

    def poll(self) -> None:
        if not self._polling:
            self._polling = True
            self.run_worker(self.refresh_now(), group="models", exit_on_error=False)

    async def refresh_now(self) -> bool:
        """One read of the model versions, shown on screen; True when the server answered."""
        self._polling = True
        try:
            report = parse_models(await self.client.models())
        except ApiError as exc:
            self._problem(exc.message)
            return False
        except ValueError as exc:
            self._problem(str(exc))
            return False
        finally:
            self._polling = False
        self.query_one(ModelsPanel).show(report)
        self.query_one(ModelsPanel).remove_class("-stale")
        self.query_one("#models-message", Static).update("")
        return True

    def _problem(self, message: str) -> None:
        self.query_one(ModelsPanel).set_class(self.query_one(ModelsPanel).report is not None, "-stale")
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
