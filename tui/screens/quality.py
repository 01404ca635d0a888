"""Answer quality and drift: the quality panel on its own screen, polled like the dashboard.

It reads the "quality" object of /admin/stats (every tenant's collections: the dashboard holds an
admin key). Polling runs in a worker, never doubled up; `autopoll=False` leaves it to the caller
(`refresh_now()`), so snapshots do not depend on timing. A failed read keeps the last numbers and
says why under them.
"""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Static

from tui import format as fmt
from tui.client import ApiError, ApplianceClient
from tui.quality import QualityReport, parse_quality
from tui.widgets.quality_panel import QualityPanel, QualityTable, share


def summary(report: QualityReport) -> str:
    grounded = fmt.DASH if report.groundedness_mean is None else f"{report.groundedness_mean:.2f}"
    return (f"{fmt.count(report.num_answers)} answers · grounded {grounded} · idk "
            f"{share(report.num_idk, report.num_answers)} · bad cite "
            f"{share(report.num_invalid_citations, report.num_answers)} · drifted {report.num_drifted}/"
            f"{len(report.scopes)} · flagged {fmt.count(report.num_flagged)} chunks")


class QualityScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Back to the dashboard")]

    def __init__(self, client: ApplianceClient, poll_interval_s: float = 1.0, autopoll: bool = True) -> None:
        super().__init__()
        self.client = client
        self.poll_interval_s = poll_interval_s
        self.autopoll = autopoll
        self._polling = False

    def compose(self) -> ComposeResult:
        yield Static(id="quality-summary")
        yield QualityPanel(id="quality")
        yield Static(id="quality-message")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(QualityTable).focus()
        if self.autopoll:
            self.poll()
            self.set_interval(self.poll_interval_s, self.poll)

    def action_close(self) -> None:
        self.dismiss(None)

    def poll(self) -> None:
        if not self._polling:
            self._polling = True
            self.run_worker(self.refresh_now(), group="quality", exit_on_error=False)

    async def refresh_now(self) -> bool:
        """One read of the server's quality numbers, shown on screen; True when it answered."""
        self._polling = True
        try:
            report = parse_quality(await self.client.stats())
        except ApiError as exc:
            self._message(f"not updated: {exc.message}")
            return False
        except ValueError as exc:
            self._message(f"not updated: {exc}")
            return False
        finally:
            self._polling = False
        self.query_one("#quality-summary", Static).update(summary(report))
        self.query_one(QualityPanel).show(report)
        self._message("")
        return True

    def _message(self, text: str) -> None:
        self.query_one("#quality-message", Static).update(text)
