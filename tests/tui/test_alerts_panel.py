"""The alerts strip of the dashboard (issue 13, SLOs and alerts).

Firing alerts come first, worst first, each with how long it has fired; beyond three lines the strip
says how many more fire; with none firing it is one calm line. The snapshot replays a /admin/alerts
frame recorded on a real server driven into five alerts at once (alerts_recorded.json), under a fixed
clock. The last test drives the real server of this package into an alert (unrecognised keys) and
waits for the real dashboard to show it.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path

import pytest
from textual.app import App, ComposeResult

import tui
from tests.server.helpers import ServerProcess
from tests.tui.helpers import dashboard, http, wait_until
from tui.alerts import parse_alerts
from tui.widgets.alerts_panel import AlertsPanel
from tui.widgets.kv_panel import KvPanel

RECORDED = json.loads(Path(__file__).with_name("alerts_recorded.json").read_text())
LATEST_SINCE = max(datetime.fromisoformat(a["since"]).timestamp() for a in RECORDED["alerts"])
FIXED_NOW = LATEST_SINCE + 75.0  # the newest alert has fired for 1m15s
NUM_BAD_KEYS = 20  # the server's default alert_auth_failures


class AlertsHarness(App[None]):
    """The strip alone, styled as in the dashboard, showing one frame under a fixed clock."""

    CSS_PATH = Path(tui.__file__).with_name("dashboard.tcss")

    def __init__(self, doc: dict) -> None:
        super().__init__()
        self.doc = doc

    def compose(self) -> ComposeResult:
        yield AlertsPanel(clock=lambda: FIXED_NOW, id="alerts")

    def on_mount(self) -> None:
        self.query_one(AlertsPanel).show(parse_alerts(self.doc))


def firing_names(doc: dict) -> list[str]:
    return [a["name"] for a in doc["alerts"] if a["state"] == "firing"]


def test_recorded_frame_has_more_alerts_firing_than_lines():
    assert len(firing_names(RECORDED)) > 3, "re-record the frame with four or more alerts firing"


def test_snapshot_of_firing_alerts(snap_compare):
    assert snap_compare(AlertsHarness(RECORDED), terminal_size=(110, 6))


async def test_firing_alerts_are_listed_worst_first_with_their_age():
    app = AlertsHarness(RECORDED)
    async with app.run_test(size=(110, 6)):
        lines = app.query_one(AlertsPanel).text.splitlines()
    rows = parse_alerts(RECORDED)
    firing = [r for r in rows if r.firing]
    assert len(lines) == 3
    assert lines[2] == f"… {len(firing) - 2} more firing (GET /admin/alerts lists them all)"
    for line, row in zip(lines[:2], firing, strict=False):
        assert line.startswith(f"● {row.severity.upper()} {row.name}"), line
        age = int(FIXED_NOW - row.since)
        assert f" · {age // 60}m{age % 60:02d}s · " in line or f" · {age}s · " in line, line
    assert firing[0].severity == "page", "pages come before warnings"


async def test_calm_line_when_nothing_fires():
    calm = copy.deepcopy(RECORDED)
    for item in calm["alerts"]:
        item["state"] = "ok"
    app = AlertsHarness(calm)
    async with app.run_test(size=(110, 6)):
        panel = app.query_one(AlertsPanel)
        assert panel.text == f"✔ no alerts firing · {len(calm['alerts'])} rule instances ok"
        assert not panel.has_class("-firing") and not panel.display, "the strip hides while all is calm"


async def test_alerts_that_could_not_be_read_stay_listed_and_say_so():
    app = AlertsHarness(RECORDED)
    async with app.run_test(size=(110, 6)):
        panel = app.query_one(AlertsPanel)
        before = panel.text
        panel.show_problem("internal error (500)")
        assert panel.text == f"alerts not updated: internal error (500)\n{before}"
        assert panel.display


def test_an_alert_without_its_fields_is_refused():
    broken = copy.deepcopy(RECORDED)
    del broken["alerts"][0]["since"]
    with pytest.raises(ValueError, match="since"):
        parse_alerts(broken)
    with pytest.raises(ValueError, match="neither firing nor ok"):
        parse_alerts({"alerts": [{**RECORDED["alerts"][0], "state": "pending"}]})


async def test_dashboard_shows_the_alert_a_real_server_fires(server: ServerProcess):
    for i in range(NUM_BAD_KEYS):
        status, _ = http(server, "GET", "/v1/models", key=f"sk-wrong-{i:04d}-000000000000")
        assert status == 401
    app = dashboard(server)
    async with app.run_test(size=(120, 30)) as pilot:
        panel = app.query_one(AlertsPanel)
        await wait_until(pilot, lambda: "auth_failure_spike tenant=(unknown)" in panel.text,
                         lambda: f"the auth alert on screen; the strip says {panel.text!r}")
        assert panel.has_class("-firing") and panel.display
        kv = app.last_poll.stats.kv  # the KV footprint of the same poll, as the KV panel shows it
        assert f"waste {kv.waste_perc * 100:.1f}% · KV {kv.memory_share * 100:.1f}% of memory" in \
            app.query_one(KvPanel).text
