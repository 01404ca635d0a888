"""Against the synthetic server: `python -m tui.capture` (the README's picture), polls that only
partly succeed, and an answer of a shape the dashboard does not expect."""

from __future__ import annotations

import pytest

from tests.server.helpers import free_port
from tests.tui.synthetic import KEY
from tui.app import DashboardApp
from tui.capture import main
from tui.widgets.latency_panel import LatencyPanel
from tui.widgets.status_bar import ConnectionBanner, MessageLine
from tui.widgets.tenants_table import TenantsTable


def test_capture_writes_the_dashboard_as_svg(synthetic, tmp_path):
    out = tmp_path / "dash.svg"
    args = [str(out), "--url", synthetic.url, "--api-key", KEY, "--seconds", "1.5", "--size", "100x30"]
    assert main(args) == 0
    svg = out.read_text()
    assert svg.startswith("<svg") and "2,048&#160;blocks" in svg and "Throughput" in svg


def test_capture_of_an_unreachable_server_fails_with_one_line(tmp_path, capsys):
    out = tmp_path / "dash.svg"
    url = f"http://127.0.0.1:{free_port()}"
    assert main([str(out), "--url", url, "--api-key", KEY, "--seconds", "0.5"]) == 1
    assert capsys.readouterr().err.strip() == f"capture: error: cannot connect to {url} (connection refused)"
    assert not out.exists()
    with pytest.raises(SystemExit):
        main([str(out), "--api-key", KEY, "--size", "12"])


async def test_a_failing_secondary_read_only_marks_its_panel(synthetic):
    """/metrics or the tables failing must not call the whole server down: stats still show."""
    synthetic.reset()
    app = DashboardApp(synthetic.url, KEY, autopoll=False)
    async with app.run_test(size=(100, 30)):
        assert await app.refresh_now() and await app.refresh_now()
        rows_before = app.query_one(TenantsTable).cells()
        synthetic.failing = {"/metrics", "/admin/tenants"}
        assert await app.refresh_now()
        assert not app.query_one(ConnectionBanner).has_class("-visible")
        assert app.query_one(LatencyPanel).border_subtitle == "not updated: internal error (500)"
        assert app.query_one(TenantsTable).border_subtitle == "not updated: internal error (500)"
        assert app.query_one(TenantsTable).cells() == rows_before  # the last rows stay
        synthetic.failing = set()
        assert await app.refresh_now()
        assert app.query_one(LatencyPanel).border_subtitle == ""


async def test_an_unexpected_answer_is_reported_not_a_crash(synthetic):
    synthetic.reset()
    app = DashboardApp(synthetic.url, KEY, autopoll=False)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await app.refresh_now()
        await pilot.press("f")
        await app.workers.wait_for_complete()
        await pilot.pause()
        line = app.query_one(MessageLine).message
        assert line.startswith("flush failed unexpectedly: ValueError"), line
        assert app.is_running
