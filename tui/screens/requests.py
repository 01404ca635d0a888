"""Recent requests: the traces the appliance keeps, newest or slowest first, and a waterfall of one.

The table lists the last requests the server traced (`GET /admin/traces`); the waterfall below it
shows the stages of the highlighted one, and the screen opens on the slowest, the request an
operator asks about first. `s` switches the table between newest first and slowest first. Polling
runs in a worker, never doubled up; `autopoll=False` leaves it to the caller (`refresh_now()`), so
snapshots do not depend on timing.
"""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tui.client import ApiError, ApplianceClient
from tui.traces import Trace, TraceList, parse_traces
from tui.widgets.traces_table import TracesTable
from tui.widgets.waterfall import Waterfall

NUM_TRACES = 50
ORDER_LABELS = {"recent": "newest first", "slowest": "slowest first"}


class RequestsScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Back to the dashboard"),
        Binding("s", "toggle_order", "Newest/slowest first"),
    ]

    def __init__(self, client: ApplianceClient, poll_interval_s: float = 1.0, autopoll: bool = True) -> None:
        super().__init__()
        self.client = client
        self.poll_interval_s = poll_interval_s
        self.autopoll = autopoll
        self.order = "recent"
        self.listing: TraceList | None = None
        self._polling = False
        self._picked_slowest = False  # the cursor starts on the slowest request, once

    def compose(self) -> ComposeResult:
        yield Static(id="req-summary")
        yield TracesTable(id="req-table")
        yield Waterfall(id="req-waterfall")
        yield Static(id="req-message")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(TracesTable).border_title = "Recent requests"
        self.query_one(Waterfall).show(None)
        self.query_one(TracesTable).focus()
        if self.autopoll:
            self.poll()
            self.set_interval(self.poll_interval_s, self.poll)

    def action_close(self) -> None:
        self.dismiss(None)

    def action_toggle_order(self) -> None:
        self.order = "slowest" if self.order == "recent" else "recent"
        self.poll()

    # --- polling ---------------------------------------------------------------------------------
    def poll(self) -> None:
        if not self._polling:
            self._polling = True
            self.run_worker(self.refresh_now(), group="traces", exit_on_error=False)

    async def refresh_now(self) -> bool:
        """One read of the server's traces, shown on screen; True when it answered."""
        self._polling = True
        try:
            listing = parse_traces(await self.client.traces(NUM_TRACES, self.order))
        except ApiError as exc:
            self._message(f"cannot read the traces: {exc.message}")
            return False
        except ValueError as exc:
            self._message(f"cannot read the traces: {exc}")
            return False
        finally:
            self._polling = False
        self.show(listing)
        return True

    def show(self, listing: TraceList) -> None:
        self.listing = listing
        self.query_one("#req-summary", Static).update(summary(listing))
        table = self.query_one(TracesTable)
        table.show(listing.traces)
        if listing.traces and not self._picked_slowest:
            self._picked_slowest = True
            slowest = max(listing.traces, key=lambda t: t.duration_ms)
            table.move_cursor(row=listing.traces.index(slowest))
        self._message("")
        self._show_highlighted()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_highlighted()

    def _show_highlighted(self) -> None:
        self.query_one(Waterfall).show(self.highlighted)

    @property
    def highlighted(self) -> Trace | None:
        key = self.query_one(TracesTable).highlighted_key
        traces = self.listing.traces if self.listing else ()
        return next((t for t in traces if t.trace_id == key), None)

    def _message(self, text: str) -> None:
        self.query_one("#req-message", Static).update(text)


def summary(listing: TraceList) -> str:
    if not listing.enabled:
        return "tracing is off on this appliance (APPLIANCE_TRACING, POST /admin/tracing): new requests " \
               "are not traced"
    n = len(listing.traces)
    other = "recent" if listing.order == "slowest" else "slowest"
    return (f"{n} traced request{'s' if n != 1 else ''}, {ORDER_LABELS.get(listing.order, listing.order)} "
            f"· s: {ORDER_LABELS[other]} · ↑↓: the request in the waterfall")
