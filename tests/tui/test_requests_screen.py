"""The recent requests screen: its table of traces and the waterfall of the highlighted request.

Snapshots and keys against the synthetic appliance, which replays a trace list recorded from a real
server (tests/tui/traces_recorded.json), so the picture is the same on every run; then against the
real server: a request made there shows up on the screen with its stages.
"""

from __future__ import annotations

import json
import urllib.request

from textual.pilot import Pilot
from textual.widgets import Static

from tests.server.helpers import ADMIN_KEY, ServerProcess
from tests.tui.helpers import connected, dashboard, wait_until
from tests.tui.synthetic import KEY, RECORDED_TRACES
from tui.app import DashboardApp
from tui.screens.requests import RequestsScreen
from tui.widgets.traces_table import TracesTable
from tui.widgets.waterfall import Waterfall, bar_cells

SIZE = (100, 30)


def replayed(url: str) -> DashboardApp:
    return DashboardApp(url, KEY, autopoll=False)


async def open_requests(pilot: Pilot) -> RequestsScreen:
    await pilot.press("r")
    screen = pilot.app.screen
    assert isinstance(screen, RequestsScreen)
    assert await screen.refresh_now()
    await pilot.pause()
    return screen


def slowest_id() -> str:
    return max(RECORDED_TRACES, key=lambda t: t["duration_ms"])["trace_id"]


def test_requests_screen(snap_compare, synthetic):
    synthetic.reset()
    assert snap_compare(replayed(synthetic.url), terminal_size=SIZE, run_before=open_requests)


async def test_the_screen_opens_on_the_slowest_request_and_follows_the_cursor(synthetic):
    synthetic.reset()
    app = replayed(synthetic.url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_requests(pilot)
        table, waterfall = screen.query_one(TracesTable), screen.query_one(Waterfall)
        assert [row[-1] for row in table.cells()] == [t["trace_id"][:8] for t in RECORDED_TRACES]
        assert waterfall.trace is not None and waterfall.trace.trace_id == slowest_id()
        ids = [t["trace_id"] for t in RECORDED_TRACES]
        await pilot.press(*["up"] * ids.index(slowest_id()))  # to the newest, the first row
        assert waterfall.trace.trace_id == ids[0]
        stages = [s["name"] for s in RECORDED_TRACES[0]["spans"]]
        assert [s.name for s in waterfall.trace.stages] == stages


async def test_s_sorts_the_slowest_first_and_escape_goes_back(synthetic):
    synthetic.reset()
    app = replayed(synthetic.url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_requests(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: screen.listing is not None and screen.listing.order == "slowest",
                         "the slowest-first listing")
        durations = [t.duration_ms for t in screen.listing.traces]
        assert durations == sorted(durations, reverse=True)
        assert "slowest first" in str(screen.query_one("#req-summary", Static).render())
        await pilot.press("escape")
        assert not isinstance(app.screen, RequestsScreen)


async def test_a_server_without_tracing_says_so(synthetic):
    synthetic.reset()
    synthetic.tracing = False
    app = replayed(synthetic.url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_requests(pilot)
        assert "tracing is off" in str(screen.query_one("#req-summary", Static).render())
        assert screen.query_one(TracesTable).row_count == 0
        assert screen.query_one(Waterfall).trace is None


async def test_an_unreadable_answer_is_reported_not_shown_empty(synthetic):
    synthetic.reset()
    synthetic.failing = {"/admin/traces"}
    app = replayed(synthetic.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        screen = app.screen
        assert isinstance(screen, RequestsScreen) and not await screen.refresh_now()
        assert "cannot read the traces" in str(screen.query_one("#req-message", Static).render())


def test_bars_start_and_end_where_their_stages_do():
    from tui.traces import Stage

    assert bar_cells(Stage("decode", None, 500.0, 500.0), 1000.0, 40) == (20, 20)
    assert bar_cells(Stage("auth", None, 0.0, 0.2), 1000.0, 40) == (0, 0)  # thinner than a cell
    assert bar_cells(Stage("stream", None, 999.9, 0.1), 1000.0, 40) == (39, 1)


def _traced_completion(server: ServerProcess, prompt: str) -> str:
    body = json.dumps({"model": server.model, "prompt": prompt, "max_tokens": 4, "temperature": 0.0}).encode()
    req = urllib.request.Request(server.url + "/v1/completions", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {ADMIN_KEY}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return resp.headers["X-Trace-Id"]


async def test_a_request_to_the_real_server_shows_up_with_its_stages(server):
    trace_id = _traced_completion(server, "The requests screen lists this request")
    app = dashboard(server)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await pilot.press("r")
        screen = app.screen
        assert isinstance(screen, RequestsScreen)
        table = screen.query_one(TracesTable)
        await wait_until(pilot, lambda: any(row[-1] == trace_id[:8] for row in table.cells()),
                         "the request's row")
        table.move_cursor(row=[row[-1] for row in table.cells()].index(trace_id[:8]))
        await pilot.pause()
        shown = screen.query_one(Waterfall).trace
        assert shown is not None and shown.trace_id == trace_id
        assert [s.name for s in shown.stages] == ["auth", "prompt", "queue", "prefill", "decode", "respond"]
        assert shown.route == "/v1/completions" and shown.status == 200
