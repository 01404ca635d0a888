"""The model versions screen (issue 14: canary, promote, rollback).

A real aiohttp server on 127.0.0.1 replays a /admin/models frame recorded on a real server
(models_recorded.json): v1 live, the int4 canary q4 taking 30% of traffic and a long-prompt rule,
after an earlier canary (q4-slow) was rolled back automatically for its TTFT. It also takes the
promote and rollback POSTs and answers them as a test scripts. The snapshot runs under a fixed clock;
the last test asks the real server of this package to roll back with nothing to roll back.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path

import pytest
from aiohttp import web
from textual.pilot import Pilot
from textual.widgets import Static

from tests.server.helpers import ServerProcess
from tests.threaded_app import ThreadedApp
from tests.tui.helpers import dashboard, message, wait_until
from tui.app import DashboardApp
from tui.models import parse_models
from tui.screens.confirm import ConfirmScreen
from tui.screens.models import ModelsScreen
from tui.widgets.models_panel import ModelsPanel

RECORDED = json.loads(Path(__file__).with_name("models_recorded.json").read_text())
NEWEST = max(datetime.fromisoformat(e["time"]).timestamp() for e in RECORDED["events"])
FIXED_NOW = NEWEST + 65.0  # the newest event happened 1m05s ago
KEY = "models-admin-key"
SIZE = (100, 30)
NOTHING_TO_ROLL_BACK = ("nothing to roll back: no canary, and no previous live version is loaded "
                        "(its grace period may have ended)")


def refusal(text: str) -> web.Response:
    error = {"message": text, "type": "invalid_request_error", "param": None, "code": "invalid_state"}
    return web.json_response({"error": error}, status=400)


class RecordedModels(ThreadedApp):
    """GET /admin/models answers `doc` (or `status_override`); the moves are kept in `posts`."""

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.doc: dict = copy.deepcopy(RECORDED)
        self.status_override: int | None = None
        self.refuse_rollback = False
        self.posts: list[tuple[str, dict | None]] = []

    def build(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/admin/models", self._models)
        app.router.add_post("/admin/models/promote", self._promote)
        app.router.add_post("/admin/models/rollback", self._rollback)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        assert request.headers.get("Authorization") == f"Bearer {KEY}"
        if self.status_override == 503:
            error = {"message": "the model is still loading", "type": "server_error", "param": None,
                     "code": "model_loading"}
            return web.json_response({"error": error}, status=503)
        return web.json_response(self.doc)

    async def _promote(self, request: web.Request) -> web.Response:
        self.posts.append((request.path, await request.json() if request.can_read_body else None))
        canary = next(v for v in self.doc["versions"] if v["name"] == self.doc["canary"])
        return web.json_response({**canary, "state": "live", "previous_live": self.doc["live"]})

    async def _rollback(self, request: web.Request) -> web.Response:
        self.posts.append((request.path, await request.json() if request.can_read_body else None))
        if self.refuse_rollback:
            return refusal(NOTHING_TO_ROLL_BACK)
        return web.json_response({"retired": self.doc["canary"], "live": self.doc["live"]})


@pytest.fixture(scope="module")
def recorded() -> RecordedModels:
    with RecordedModels() as app:
        yield app


@pytest.fixture
def fake(recorded: RecordedModels) -> RecordedModels:
    recorded.reset()
    return recorded


def replayed(fake: RecordedModels) -> DashboardApp:
    return DashboardApp(fake.url, KEY, autopoll=False)


async def open_models(pilot: Pilot) -> ModelsScreen:
    """The models screen, read once under the fixed clock."""
    await pilot.press("m")
    screen = pilot.app.screen
    assert isinstance(screen, ModelsScreen)
    screen.query_one(ModelsPanel).clock = lambda: FIXED_NOW
    assert await screen.refresh_now()
    await pilot.pause()
    return screen


def shown(screen: ModelsScreen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


def test_snapshot_of_the_models_screen(snap_compare, fake):
    assert snap_compare(replayed(fake), terminal_size=SIZE, run_before=open_models)


async def test_live_and_canary_side_by_side_with_their_numbers(fake):
    async with replayed(fake).run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        live, canary = screen.query_one("#models-live"), screen.query_one("#models-side")
        assert (live.border_title, canary.border_title) == ("live · v1", "canary · q4")
        assert live.region.y == canary.region.y and live.region.right <= canary.region.x
        live_text, canary_text = shown(screen, "#models-live"), shown(screen, "#models-side")
        rules, head = shown(screen, "#models-rules"), shown(screen, "#models-head")
    # the recorded numbers: v1 769 MiB fp32, 20 requests, TTFT 1.52 s / 1.53 s; q4 int4 347 MiB
    for part in ("live · none/auto", "769 MiB · in flight 0", "20 req · 0 err (0.0%) /60s",
                 "p50 1.52 s · p90 1.53 s", "TPOT    p50 368 ms", "answers 0 · grounded – · idk 0"):
        assert part in live_text, (part, live_text)
    for part in ("canary · int4/auto", "share   30% of traffic", "347 MiB · in flight 0",
                 "11 req · 0 err (0.0%) /60s", "p50 449 ms · p90 796 ms", "TPOT    p50 83 ms",
                 "answers 6 · grounded 0.86 · idk 0", "canary 4 · rule:long-to-q4 7"):
        assert part in canary_text, (part, canary_text)
    assert rules == "long-to-q4 → q4  prompt ≥ 40 tokens  7 hits"
    assert "memory 1.09 GiB of 1.20 GiB (91%)" in head and "also q4-slow retired" in head


async def test_the_auto_rollback_says_why(fake):
    async with replayed(fake).run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        why = screen.query_one("#models-why")
        assert why.display and why.has_class("-shown")
        events = shown(screen, "#models-events").splitlines()
        why_text = shown(screen, "#models-why")
    reason = "TTFT p90 0.42 s > 1e-06 s over the last 60 s (3 requests)"
    assert why_text == f"⚠ auto rollback of q4-slow 1m23s ago: {reason}"
    [line] = [line for line in events if "auto rollback" in line]
    assert line == f" 1m23s ago auto rollback q4-slow · server · {reason}"
    assert events[0].startswith(" 1m05s ago rules long-to-q4 · env-admin")


async def test_right_after_an_auto_rollback_there_is_no_canary(fake):
    fake.doc = {**RECORDED, "canary": None, "canary_share": 0.0, "rules": [],
                "versions": [v for v in RECORDED["versions"] if v["name"] != "q4"],
                "events": [e for e in RECORDED["events"] if e["version"] in ("q4-slow", "v1")]}
    async with replayed(fake).run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        side = screen.query_one("#models-side")
        assert side.border_title == "canary"
        assert shown(screen, "#models-side") == "no canary: traffic all goes to the live version"
        assert shown(screen, "#models-why").startswith("⚠ auto rollback of q4-slow")
        assert shown(screen, "#models-rules") == "no routing rules: requests follow the canary share"


def promoted() -> dict:
    """The recorded frame as it reads after q4 was promoted: v1 waits out its grace period, loaded."""
    states = {"v1": "ready", "q4": "live"}
    versions = [{**v, "state": states.get(v["name"], v["state"]), "canary_share": 0.0}
                for v in RECORDED["versions"]]
    return {**RECORDED, "live": "q4", "canary": None, "previous_live": "v1", "versions": versions}


async def test_after_a_promotion_the_rollback_target_stands_beside_the_live_version(fake):
    fake.doc = promoted()
    app = replayed(fake)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        assert screen.query_one("#models-live").border_title == "live · q4"
        assert screen.query_one("#models-side").border_title == "previous live · v1"
        assert shown(screen, "#models-side").startswith("state   ready · none/auto")
        await pilot.press("b")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        question = str(app.screen.query_one("#confirm-question", Static).render())
        assert question == "Roll back to v1? It becomes live again and q4 is retired."


async def test_a_loading_server_keeps_the_last_numbers_and_says_why(fake):
    async with replayed(fake).run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        before = shown(screen, "#models-side")
        fake.status_override = 503
        assert not await screen.refresh_now()
        await pilot.pause()
        assert shown(screen, "#models-side") == before
        assert screen.query_one(ModelsPanel).has_class("-stale")
        assert shown(screen, "#models-message") == "not updated: the model is still loading (503)"


async def test_promote_asks_first_then_posts(fake):
    app = replayed(fake)
    async with app.run_test(size=SIZE) as pilot:
        assert {"m", "o", "b"} <= set(app.screen.active_bindings)
        await pilot.press("o")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        question = str(app.screen.query_one("#confirm-question", Static).render())
        assert question.startswith("Promote q4 to live? It takes all traffic; v1 stays loaded")
        assert fake.posts == [], "nothing moves before the operator says yes"
        await pilot.press("n")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen) and fake.posts == []
        await pilot.press("o")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        await pilot.press("y")
        await wait_until(pilot, lambda: message(app).startswith("promoted"), "the promotion")
        assert fake.posts == [("/admin/models/promote", None)]
        assert message(app) == "promoted q4 to live; v1 stays loaded for rollback (b)"


async def test_a_refused_rollback_shows_the_servers_message(fake):
    fake.refuse_rollback = True
    app = replayed(fake)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        assert {"o", "b"} <= set(screen.active_bindings), "the moves are keys of the models screen too"
        await pilot.press("b")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        question = str(app.screen.query_one("#confirm-question", Static).render())
        assert question == "Roll back the canary q4? It is retired and all traffic returns to v1."
        await pilot.press("y")
        await wait_until(pilot, lambda: message(app).startswith("rollback failed"), "the refusal")
        assert message(app) == f"rollback failed: {NOTHING_TO_ROLL_BACK} (400)"
        assert any(n.message == message(app) and n.severity == "error" for n in app._notifications)
        assert app.screen is screen, "the operator stays on the models screen"
    assert fake.posts == [("/admin/models/rollback", {"reason": "rolled back from the dashboard"})]


def test_a_models_document_without_its_fields_is_refused():
    broken = copy.deepcopy(RECORDED)
    del broken["versions"][0]["state"]
    with pytest.raises(ValueError, match="state"):
        parse_models(broken)
    with pytest.raises(ValueError, match="no 'versions' list"):
        parse_models({"served_model": None})
    report = parse_models(RECORDED)
    assert (report.live, report.canary, report.last_rollback.action) == ("v1", "q4", "auto_rollback")


async def test_the_real_server_refuses_a_rollback_with_nothing_to_roll_back(server: ServerProcess):
    app = dashboard(server)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("m")
        screen = app.screen
        assert isinstance(screen, ModelsScreen)
        await wait_until(pilot, lambda: screen.query_one(ModelsPanel).report is not None, "the versions")
        assert screen.query_one("#models-live").border_title == "live · v1"
        assert screen.query_one("#models-side").border_title == "canary"
        await pilot.press("b")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        await pilot.press("y")
        await wait_until(pilot, lambda: message(app).startswith("rollback failed"), "the refusal")
        assert "nothing to roll back" in message(app) and message(app).endswith("(400)")
