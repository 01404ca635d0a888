"""SVG snapshots of the dashboard: main screen (80x24 and larger), help, disconnected, a form's errors.

The numbers come from the synthetic appliance over real HTTP; polls are driven by the test (no
timer), so the history in the charts is the same on every run. Update with --snapshot-update
after checking the new picture by eye.
"""

from __future__ import annotations

from textual.pilot import Pilot
from textual.widgets import Input

from tests.tui.synthetic import KEY, USED
from tui.app import DashboardApp

NUM_POLLS = len(USED)
DOWN_URL = "http://127.0.0.1:9"  # the discard port: nothing listens there


def dashboard(url: str, key: str = KEY) -> DashboardApp:
    return DashboardApp(url, key, autopoll=False)


async def poll(pilot: Pilot, times: int = NUM_POLLS) -> None:
    for _ in range(times):
        assert await pilot.app.refresh_now(), pilot.app.last_error


def test_main_screen_80x24(snap_compare, synthetic):
    synthetic.reset()
    assert snap_compare(dashboard(synthetic.url), terminal_size=(80, 24), run_before=poll)


def test_main_screen_scales_up(snap_compare, synthetic):
    synthetic.reset()
    assert snap_compare(dashboard(synthetic.url), terminal_size=(132, 40), run_before=poll)


def test_help_screen(snap_compare, synthetic):
    synthetic.reset()

    async def open_help(pilot: Pilot) -> None:
        await poll(pilot)
        await pilot.press("question_mark")

    assert snap_compare(dashboard(synthetic.url), terminal_size=(80, 24), run_before=open_help)


def test_disconnected(snap_compare):
    async def fail_once(pilot: Pilot) -> None:
        assert not await pilot.app.refresh_now()

    assert snap_compare(dashboard(DOWN_URL), terminal_size=(80, 24), run_before=fail_once)


def test_ingest_form_errors(snap_compare, synthetic):
    synthetic.reset()

    async def bad_ingest(pilot: Pilot) -> None:
        await poll(pilot)
        await pilot.press("i")
        pilot.app.screen.query_one("#collection", Input).value = "bad name!"
        pilot.app.screen.query_one("#path", Input).value = "/no/such/dir/notes.md"
        await pilot.press("enter")

    assert snap_compare(dashboard(synthetic.url), terminal_size=(80, 24), run_before=bad_ingest)


def test_tenant_form_errors(snap_compare, synthetic):
    synthetic.reset()

    async def bad_weight(pilot: Pilot) -> None:
        await poll(pilot)
        await pilot.press("e")  # the highlighted tenant: the first row, acme
        pilot.app.screen.query_one("#weight", Input).value = "heavy"
        await pilot.press("enter")

    assert snap_compare(dashboard(synthetic.url), terminal_size=(80, 24), run_before=bad_weight)
