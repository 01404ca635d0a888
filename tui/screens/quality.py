"""Answer quality and drift: the quality panel on its own screen, polled like the dashboard.

It reads the "quality" object of /admin/stats (every tenant's collections: the dashboard holds an
admin key); polling as in polled.py.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Footer, Static

from tui import format as fmt
from tui.quality import QualityReport, parse_quality
from tui.screens.polled import PolledScreen
from tui.widgets.quality_panel import QualityPanel, QualityTable, share


def summary(report: QualityReport) -> str:
    grounded = fmt.DASH if report.groundedness_mean is None else f"{report.groundedness_mean:.2f}"
    return (f"{fmt.count(report.num_answers)} answers · grounded {grounded} · idk "
            f"{share(report.num_idk, report.num_answers)} · bad cite "
            f"{share(report.num_invalid_citations, report.num_answers)} · drifted {report.num_drifted}/"
            f"{len(report.scopes)} · flagged {fmt.count(report.num_flagged)} chunks")


class QualityScreen(PolledScreen[QualityReport]):
    POLL_GROUP = "quality"

    def compose(self) -> ComposeResult:
        yield Static(id="quality-summary")
        yield QualityPanel(id="quality")
        yield Static(id="quality-message")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(QualityTable).focus()
        super().on_mount()

    async def fetch(self) -> QualityReport:
        return parse_quality(await self.client.stats())

    def show(self, report: QualityReport) -> None:
        self.query_one("#quality-summary", Static).update(summary(report))
        self.query_one(QualityPanel).show(report)
        self._message("")

    def show_problem(self, message: str) -> None:
        self._message(f"not updated: {message}")

    def _message(self, text: str) -> None:
        self.query_one("#quality-message", Static).update(text)
