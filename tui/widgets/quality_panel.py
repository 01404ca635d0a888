"""Answer quality and drift panel: one row per (tenant, collection), the highlighted one in detail.

Columns: answers scored, mean groundedness (share of an answer's words found in its sources), share
of "I don't know" answers, share citing a source that does not exist, drift (the larger of the two
signals as a multiple of its threshold, or how far the windows have filled), and retrieved chunks
flagged for prompt-injection markers. The detail below names each drift signal's statistic against
its threshold and the last flagged chunks, so an operator can go and look at the document.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from tui import format as fmt
from tui.quality import DriftSignal, QualityReport, ScopeQuality
from tui.widgets.keyed_table import KeyedTable

BAD, GOOD, DIM = Style(color="#e06c75", bold=True), Style(color="#98c379"), Style(color="#7f848e")
SIGNAL_NAMES = {"top_score": "top score", "query_embedding": "questions"}
STATISTIC_NAMES = {"top_score": "KS D", "query_embedding": "MMD²"}


def share(part: int, whole: int) -> str:
    return fmt.percent(part / whole if whole else None, 0)


def drift_cell(scope: ScopeQuality, report: QualityReport) -> str:
    """'DRIFT 3.1×', 'ok 0.42×', or the filling window: 'baseline 12/50', 'recent 8/20'."""
    ratios = [s.ratio for s in scope.signals if s.ratio is not None]
    if ratios:
        return f"{'DRIFT' if scope.drifted else 'ok'} {max(ratios):.2f}×"
    if not scope.signals:
        return fmt.DASH
    filling = max(scope.signals, key=lambda s: (s.num_baseline, s.num_recent))
    if filling.num_baseline < report.baseline_size:
        return f"baseline {filling.num_baseline}/{report.baseline_size}"
    return f"recent {filling.num_recent}/{report.min_window}"


def scope_cells(scope: ScopeQuality, report: QualityReport) -> tuple[str, ...]:
    grounded = fmt.DASH if scope.groundedness_mean is None else f"{scope.groundedness_mean:.2f}"
    return (scope.key, fmt.count(scope.num_answers), grounded, share(scope.num_idk, scope.num_answers),
            share(scope.num_invalid_citations, scope.num_answers), drift_cell(scope, report),
            fmt.count(scope.num_flagged))


def signal_text(signal: DriftSignal) -> Text:
    name = SIGNAL_NAMES.get(signal.signal, signal.signal)
    label = f"{name} ({signal.mode})" if signal.mode else name
    text = Text(f"  {label:<20}", end="")
    window = f"recent {signal.num_recent} vs baseline {signal.num_baseline}"
    if signal.statistic is None or signal.threshold is None:
        text.append(f"filling: {window}", DIM)
        return text
    op = ">" if signal.drifted else "≤"
    stat = STATISTIC_NAMES.get(signal.signal, "stat")
    text.append(f"{stat} {signal.statistic:.3g} {op} {signal.threshold:.3g}  ")
    text.append("DRIFTED" if signal.drifted else "ok", BAD if signal.drifted else GOOD)
    text.append(f"  {window}", DIM)
    return text


def detail_text(scope: ScopeQuality | None) -> Text:
    if scope is None:
        return Text("no RAG traffic yet: scopes appear after their first retrieval", DIM, end="")
    text = Text(end="")
    text.append(scope.key, Style(bold=True))
    text.append(f"  cited {share(scope.num_cited, scope.num_answers)} of answers\n", DIM)
    text.append("drift\n", Style(bold=True))
    for signal in scope.signals:
        text.append_text(signal_text(signal))
        text.append("\n")
    text.append("injection  ", Style(bold=True))
    text.append(f"{fmt.count(scope.num_flagged)} of {fmt.count(scope.num_chunks)} retrieved chunks flagged")
    if scope.markers:
        text.append(": " + ", ".join(f"{name} {n}" for name, n in sorted(scope.markers.items())))
    for flag in reversed(scope.recent_flags[-2:]):
        markers = ", ".join(flag.get("markers") or ())
        text.append(f"\n  {flag.get('source')} #{flag.get('chunk_index')}  ", BAD)
        text.append(markers, DIM)
    return text


class QualityTable(KeyedTable):
    COLUMNS = (("collection", "scope", False), ("answers", "answers", True), ("grounded", "grounded", True),
               ("idk", "idk", True), ("bad cite", "bad_cite", True), ("drift", "drift", False),
               ("flagged", "flagged", True))


class QualityPanel(Vertical):
    report: QualityReport | None = None

    def compose(self) -> ComposeResult:
        yield QualityTable(id="quality-table")
        yield Static(detail_text(None), id="quality-detail")

    def on_mount(self) -> None:
        self.query_one(QualityTable).border_title = "Answer quality · drift · injection"

    def show(self, report: QualityReport) -> None:
        self.report = report
        table = self.query_one(QualityTable)
        table.sync([(s.key, scope_cells(s, report)) for s in report.scopes])
        self._show_detail()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    @property
    def highlighted(self) -> ScopeQuality | None:
        key = self.query_one(QualityTable).highlighted_key
        scopes = self.report.scopes if self.report else []
        return next((s for s in scopes if s.key == key), scopes[0] if scopes else None)

    def _show_detail(self) -> None:
        self.query_one("#quality-detail", Static).update(detail_text(self.highlighted))
