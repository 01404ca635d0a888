"""The dashboard application: polls the appliance in a worker, shows the panels, runs the actions.

Polling and every action run as Textual workers on the app's event loop and wait on aiohttp, so
the UI never blocks on the network; a poll that is still in flight when the next tick comes is not
doubled up. A failed poll leaves the last numbers on screen (dimmed) under a banner that says what
is wrong, and the timer keeps retrying.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid
from textual.widgets import Footer
from textual.worker import Worker, WorkerState

from tui.ask_session import AskClient
from tui.client import ApiError, ApplianceClient
from tui.latency import TPOT, TTFT, LatencyWindow
from tui.models import ModelsReport, parse_models
from tui.poller import PollResult, poll_once
from tui.screens.ask import AskScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.help import HelpScreen
from tui.screens.ingest import IngestRequest, IngestScreen
from tui.screens.models import ModelsScreen, promote_question, rollback_question
from tui.screens.new_key import KeyShownScreen, NewKey, NewKeyScreen
from tui.screens.quality import QualityScreen
from tui.screens.requests import RequestsScreen
from tui.screens.tenant_limits import TenantLimitsScreen, TenantUpdate, describe
from tui.stats import CollectionRow
from tui.widgets.admission_panel import AdmissionPanel
from tui.widgets.alerts_panel import AlertsPanel
from tui.widgets.collections_table import CollectionsTable
from tui.widgets.kv_panel import KvPanel
from tui.widgets.latency_panel import LatencyPanel
from tui.widgets.status_bar import ConnectionBanner, MessageLine, StatusBar
from tui.widgets.tenants_table import TenantsTable
from tui.widgets.throughput_panel import ThroughputPanel

DEFAULT_URL = "http://127.0.0.1:8080"
MAIN_ACTIONS = {"ingest", "flush", "toggle_admission", "new_key", "edit_tenant", "ask", "requests", "quality",
                "models", "help"}
MODEL_MOVES = {"promote", "rollback"}  # also on the models screen, where the versions are in view
ROLLBACK_REASON = "rolled back from the dashboard"


class DashboardApp(App[None]):
    CSS_PATH = "dashboard.tcss"
    TITLE = "appliance dashboard"
    ENABLE_COMMAND_PALETTE = False
    AUTO_FOCUS = None
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("i", "ingest", "Ingest"),
        Binding("f", "flush", "Flush cache"),
        Binding("p", "toggle_admission", "Pause/resume"),
        Binding("k", "new_key", "New key"),
        Binding("e", "edit_tenant", "Edit tenant", show=False),
        Binding("a", "ask", "Ask"),
        Binding("r", "requests", "Requests"),
        Binding("d", "quality", "Quality"),
        Binding("m", "models", "Models"),
        Binding("o", "promote", "Promote"),
        Binding("b", "rollback", "Roll back"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, poll_interval_s: float = 1.0,
                 autopoll: bool = True, ca_cert: str | None = None) -> None:
        """`autopoll=False` leaves polling to the caller (`refresh_now()`): tests use it for
        screenshots that do not depend on timing. `ca_cert` verifies an https server (see the client)."""
        super().__init__()
        self.client = ApplianceClient(url, api_key, ca_cert=ca_cert)
        self.ask_client = AskClient(url, api_key, ca_cert=ca_cert)  # the Ask screen's own session
        self.poll_interval_s = poll_interval_s
        self.autopoll = autopoll
        self.latency = LatencyWindow()
        self.last_poll: PollResult | None = None
        self.last_error: str | None = None
        self.uploads: dict[str, str] = {}
        self._collections: list[CollectionRow] = []  # the last collection rows the server gave
        self._polling = False
        self.num_polls = 0  # attempts, answered or not: the retrying is visible to tests and operators

    def compose(self) -> ComposeResult:
        yield StatusBar(self.client.base_url, id="status")
        yield ConnectionBanner(id="banner")
        yield AlertsPanel(id="alerts")
        with Grid(id="panels"):
            yield KvPanel(id="kv", classes="panel")
            yield ThroughputPanel(id="throughput", classes="panel")
            yield LatencyPanel(id="latency", classes="panel")
            yield AdmissionPanel(id="admission", classes="panel")
            yield TenantsTable(id="tenants")
            yield CollectionsTable(id="collections")
        yield MessageLine(id="message")
        yield Footer()

    def on_mount(self) -> None:
        if self.autopoll:
            self.poll()
            self.set_interval(self.poll_interval_s, self.poll)

    async def on_unmount(self) -> None:
        await self.client.close()
        await self.ask_client.close()

    # --- polling ---------------------------------------------------------------------------------
    def poll(self) -> None:
        """Start a poll in a worker unless one is still running."""
        if not self._polling:
            self._polling = True
            # the method, not a coroutine: a tick during shutdown leaves no coroutine unawaited
            self.run_worker(self.refresh_now, group="poll", exit_on_error=False)

    async def refresh_now(self) -> bool:
        """One poll, shown on screen; True when the appliance answered."""
        self._polling = True
        self.num_polls += 1
        try:
            result = await poll_once(self.client)
        except ApiError as exc:
            self.show_disconnected(exc.message, exc.label)
            return False
        except ValueError as exc:
            self.show_disconnected(f"cannot read the appliance's stats: {exc}", "bad stats")
            return False
        finally:
            self._polling = False
        if not self.is_showing():
            return False
        self.show_result(result)
        return True

    def is_showing(self) -> bool:
        """Whether the dashboard's panels are mounted: a poll that ends after exit has nowhere to go."""
        return bool(self.screen_stack) and bool(self.screen_stack[0].query(ConnectionBanner))

    def show_result(self, result: PollResult) -> None:
        stats = result.stats
        self.last_poll, self.last_error = result, None
        self.query_one(ConnectionBanner).clear_error()
        self.query_one("#panels").remove_class("-stale")
        self.query_one(StatusBar).show(stats)
        self.query_one(KvPanel).show(stats.kv, stats.prefix)
        self.query_one(ThroughputPanel).show(stats.throughput, stats.requests)
        self.query_one(AdmissionPanel).show(stats.admission, stats.requests)
        if result.histograms is not None:
            self.latency.add(result.finished_at, result.histograms)
            self.query_one(LatencyPanel).show(self.latency.quantiles(TTFT), self.latency.quantiles(TPOT))
        if result.tenants is not None:
            self.query_one(TenantsTable).show(result.tenants, stats.cost.get("currency"))
        if result.alerts is not None:
            self.query_one(AlertsPanel).show(result.alerts)
        elif "alerts" in result.problems:
            self.query_one(AlertsPanel).show_problem(result.problems["alerts"])
        if result.collections is not None:
            self._collections = result.collections
            self.query_one(CollectionsTable).show(result.collections, self.uploads)
        for part, widget in (("latency", LatencyPanel), ("tenants", TenantsTable),
                             ("collections", CollectionsTable)):
            problem = result.problems.get(part)
            self.query_one(widget).border_subtitle = f"not updated: {problem}" if problem else ""

    def show_disconnected(self, message: str, label: str) -> None:
        self.last_error = message
        if not self.is_showing():
            return
        self.query_one(ConnectionBanner).show_error(message, self.poll_interval_s)
        self.query_one(StatusBar).show_problem(label)
        self.query_one("#panels").add_class("-stale")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A worker that died of an unexpected error reports it instead of vanishing silently."""
        if event.state == WorkerState.ERROR:
            self._polling = False
            error = event.worker.error
            self.report_error(f"{event.worker.group} failed unexpectedly: {type(error).__name__}: {error}")

    # --- actions ---------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The dashboard's own keys do nothing while a dialog is open."""
        if action in MODEL_MOVES:
            return len(self.screen_stack) == 1 or isinstance(self.screen, ModelsScreen)
        return not (action in MAIN_ACTIONS and len(self.screen_stack) > 1)

    def confirm(self, message: str) -> None:
        self.query_one(MessageLine).confirm(message)
        self.notify(message, timeout=4)

    def report_error(self, message: str) -> None:
        if not self.is_showing():
            return
        self.query_one(MessageLine).error(message)
        self.notify(message, severity="error", timeout=8)

    def action_ask(self) -> None:
        """Ask as the highlighted tenant (or the first one that is not admin)."""
        self.push_screen(AskScreen(self.ask_client, self.query_one(TenantsTable).highlighted_key))

    def action_requests(self) -> None:
        self.push_screen(RequestsScreen(self.client, self.poll_interval_s, self.autopoll))

    def action_quality(self) -> None:
        self.push_screen(QualityScreen(self.client, self.poll_interval_s, self.autopoll))

    def action_models(self) -> None:
        self.push_screen(ModelsScreen(self.client, self.poll_interval_s, self.autopoll))

    def action_promote(self) -> None:
        self.ask_model_move("promote")

    def action_rollback(self) -> None:
        self.ask_model_move("rollback")

    @work(exclusive=True, group="model-ask", exit_on_error=False)
    async def ask_model_move(self, move: str) -> None:
        """Confirm first, describing the move with the versions the server has right now."""
        report = await self._models_report()
        if move == "promote":
            screen = ConfirmScreen("Promote the canary", promote_question(report), "Promote")
        else:
            screen = ConfirmScreen("Roll back", rollback_question(report), "Roll back")
        self.push_screen(screen, lambda yes: self.move_model(move) if yes else None)

    async def _models_report(self) -> ModelsReport | None:
        """None when the versions cannot be read: the question is then asked without them."""
        try:
            return parse_models(await self.client.models())
        except (ApiError, ValueError):
            return None

    @work(group="model-move", exit_on_error=False)  # never cancelled: the POST may have landed
    async def move_model(self, move: str) -> None:
        try:
            if move == "promote":
                doc = await self.client.promote_canary()
            else:
                doc = await self.client.rollback(ROLLBACK_REASON)
        except ApiError as exc:
            self.report_error(f"{'promote' if move == 'promote' else 'rollback'} failed: {exc.message}")
            return
        self.confirm(_moved(move, doc))
        if isinstance(self.screen, ModelsScreen):
            self.screen.poll()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_ingest(self) -> None:
        collection = self.query_one(CollectionsTable).highlighted_key or ""
        self.push_screen(IngestScreen(collection), self._ingest_chosen)

    def _ingest_chosen(self, request: IngestRequest | None) -> None:
        if request is not None:
            self.ingest(request)

    @work(group="ingest", exit_on_error=False)
    async def ingest(self, request: IngestRequest) -> None:
        name, total = request.collection, len(request.files)
        counts: dict[str, int] = {}
        chunks, first_error = 0, None
        try:
            for i, file in enumerate(request.files, 1):
                self._set_upload(name, f"uploading {i}/{total}")
                status, num_chunks, error = await self._upload_one(name, file)
                counts[status] = counts.get(status, 0) + 1
                chunks += num_chunks
                first_error = first_error or (f"{file.source}: {error}" if error else None)
        except ApiError as exc:
            done = sum(counts.values())
            self.report_error(f"ingest into {name!r} stopped after {done} of {total} files: {exc.message}")
            return
        finally:
            self._set_upload(name, None)
            self.poll()
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        files = f"{total} file{'s' if total != 1 else ''}"
        message = f"ingested {files} into {name!r}: {summary} · {chunks} chunks"
        if first_error:
            self.report_error(f"{message}; {first_error}")
        else:
            self.confirm(message)

    async def _upload_one(self, collection: str, file) -> tuple[str, int, str | None]:
        """(status, chunks, error) of one file; errors that doom the whole upload raise ApiError."""
        try:
            data = await asyncio.to_thread(file.path.read_bytes)
        except OSError as exc:
            return "failed", 0, (exc.strerror or str(exc)).lower()
        try:
            result = await self.client.upload(collection, file.source, data)
        except ApiError as exc:
            if exc.is_connection_error or exc.is_auth_error or exc.status in (404, 503):
                raise
            return "failed", 0, exc.message
        return result.status, (result.chunks if result.status in ("added", "replaced") else 0), result.error

    def _set_upload(self, collection: str, progress: str | None) -> None:
        if progress is None:
            self.uploads.pop(collection, None)
        else:
            self.uploads[collection] = progress
        self.query_one(CollectionsTable).show(self._collections, self.uploads)

    def action_flush(self) -> None:
        self.flush()

    @work(exclusive=True, group="flush", exit_on_error=False)
    async def flush(self) -> None:
        try:
            flushed = await self.client.flush_cache()
        except ApiError as exc:
            self.report_error(f"flush failed: {exc.message}")
            return
        self.confirm(f"prefix cache flushed: {flushed} cached block{'s' if flushed != 1 else ''} freed")
        self.poll()

    def action_toggle_admission(self) -> None:
        paused = self.last_poll.stats.admission.paused if self.last_poll else False
        self.set_admission(not paused)

    @work(exclusive=True, group="admission", exit_on_error=False)
    async def set_admission(self, pause: bool) -> None:
        try:
            snapshot = await self.client.set_paused(pause)
        except ApiError as exc:
            self.report_error(f"{'pause' if pause else 'resume'} failed: {exc.message}")
            return
        if snapshot.get("paused"):
            self.confirm("admission paused: new requests get 503 until you press p again")
        else:
            self.confirm("admission resumed: new requests are accepted")
        self.poll()

    def action_new_key(self) -> None:
        self.push_screen(NewKeyScreen(self.client), self._key_created)

    def on_data_table_row_selected(self, event: TenantsTable.RowSelected) -> None:
        """enter on a tenant's row edits it (enter on a collection's row does nothing)."""
        if isinstance(event.data_table, TenantsTable):
            self.action_edit_tenant()

    def action_edit_tenant(self) -> None:
        name = self.query_one(TenantsTable).highlighted_key
        rows = {row.name: row for row in (self.last_poll.tenants or [])} if self.last_poll else {}
        row = rows.get(name or "")
        if row is None or not row.settings:
            self.report_error("no tenant to edit: highlight one in the tenants table (tab moves there)")
            return
        self.push_screen(TenantLimitsScreen(self.client, row.name, row.settings), self._tenant_updated)

    def _tenant_updated(self, update: TenantUpdate | None) -> None:
        if update is not None:
            self.confirm(describe(update))
            self.poll()

    def _key_created(self, new_key: NewKey | None) -> None:
        if new_key is None:
            return
        created = " (new tenant)" if new_key.created_tenant else ""
        self.confirm(f"API key created for tenant {new_key.tenant!r}{created}; it is shown once")
        self.push_screen(KeyShownScreen(new_key))
        self.poll()


def _moved(move: str, doc: dict) -> str:
    """The confirmation line, from the server's answer to the move."""
    if move == "promote":
        kept = f"; {doc['previous_live']} stays loaded for rollback (b)" if doc.get("previous_live") else ""
        return f"promoted {doc.get('name')} to live{kept}"
    retired = doc.get("retired")
    return f"rolled back: {retired} retired, {doc.get('live')} is live"
