"""The quality screen: answer quality, retrieval drift and injection flags per collection.

Snapshot and keys against the synthetic appliance, which replays a "quality" object recorded from a
real server (tests/tui/quality_recorded.json), so the picture is the same on every run; then against
the real server: a question asked there shows up on the screen with the numbers /admin/stats gives.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from textual.pilot import Pilot
from textual.widgets import Static

from tests.server.helpers import ADMIN_KEY, auth
from tests.tui.helpers import connected, dashboard, http, wait_until
from tests.tui.synthetic import KEY, RECORDED_QUALITY
from tui.app import DashboardApp
from tui.format import DASH
from tui.screens.quality import QualityScreen
from tui.widgets.quality_panel import QualityTable

SIZE = (100, 30)
NOTE = ("Harbour tide notes\n\nThe Kessel harbour floods twice a day; the spring tide of March reaches "
        "4.2 metres at the northern quay, and boats must leave the inner basin an hour before.\n")


def replayed(url: str) -> DashboardApp:
    return DashboardApp(url, KEY, autopoll=False)


async def open_quality(pilot: Pilot) -> QualityScreen:
    await pilot.press("d")
    screen = pilot.app.screen
    assert isinstance(screen, QualityScreen)
    assert await screen.refresh_now()
    await pilot.pause()
    return screen


def detail(screen: QualityScreen) -> str:
    return str(screen.query_one("#quality-detail", Static).render())


def test_quality_screen(snap_compare, synthetic):
    synthetic.reset()
    assert snap_compare(replayed(synthetic.url), terminal_size=SIZE, run_before=open_quality)


async def test_one_row_per_collection_and_the_detail_follows_the_cursor(synthetic):
    synthetic.reset()
    scopes = sorted({(r["tenant"], r["collection"]) for part in ("drift", "injection")
                     for r in RECORDED_QUALITY[part]})
    drifted = {(r["tenant"], r["collection"]) for r in RECORDED_QUALITY["drift"] if r["drifted"]}
    assert drifted and len(drifted) < len(scopes)  # the recording holds both kinds
    async with replayed(synthetic.url).run_test(size=SIZE) as pilot:
        screen = await open_quality(pilot)
        rows = screen.query_one(QualityTable).cells()
        assert [row[0] for row in rows] == [f"{t}/{c}" for t, c in scopes]
        for (tenant, collection), row in zip(scopes, rows, strict=True):
            assert row[5].startswith("DRIFT") == ((tenant, collection) in drifted), row
        assert detail(screen).startswith(rows[0][0])
        await pilot.press("down")
        assert detail(screen).startswith(rows[1][0])
        await pilot.press("escape")
        assert not isinstance(pilot.app.screen, QualityScreen)


async def test_a_failed_read_keeps_the_numbers_and_says_why(synthetic):
    synthetic.reset()
    async with replayed(synthetic.url).run_test(size=SIZE) as pilot:
        screen = await open_quality(pilot)
        rows = screen.query_one(QualityTable).cells()
        synthetic.failing = {"/admin/stats"}
        assert not await screen.refresh_now()
        await pilot.pause()
        assert screen.query_one(QualityTable).cells() == rows
        message = str(screen.query_one("#quality-message", Static).render())
        assert "not updated: internal error (500)" in message


def settled(server) -> dict:
    """/admin/stats once the server has recorded every retrieval made so far (a worker does it)."""
    for _ in range(600):
        status, stats = http(server, "GET", "/admin/stats")
        assert status == 200, stats
        if not stats["quality"]["backlog"]:
            return stats
        time.sleep(0.1)
    raise AssertionError(f"the quality backlog stays at {stats['quality']['backlog']}")


async def _upload(url: str, collection: str, name: str, text: str) -> int:
    form = aiohttp.FormData()
    form.add_field("file", text.encode(), filename=name, content_type="text/plain")
    async with aiohttp.ClientSession() as s, s.post(f"{url}/v1/collections/{collection}/documents",
                                                    data=form, headers=auth(ADMIN_KEY)) as r:
        return r.status


async def test_a_question_asked_on_the_real_server_shows_up(server):
    assert await _upload(server.url, "tides", "tides.txt", NOTE) == 200
    question = {"query": "How high is the spring tide at the northern quay?", "collection": "tides",
                "top_k": 2, "max_tokens": 24}
    status, answer = await asyncio.to_thread(http, server, "POST", "/v1/rag/query", question)
    assert status == 200, answer
    stats = await asyncio.to_thread(settled, server)
    [row] = [r for r in stats["quality"]["answers"]["scopes"] if r["collection"] == "tides"]
    assert row["tenant"] == "admin" and row["num_answers"] == 1
    async with dashboard(server).run_test(size=SIZE) as pilot:
        await connected(pilot)
        await pilot.press("d")
        table = pilot.app.screen.query_one(QualityTable)
        await wait_until(pilot, lambda: any(r[0] == "admin/tides" for r in table.cells()), "the tides row")
        [cells] = [r for r in table.cells() if r[0] == "admin/tides"]
        grounded = DASH if row["groundedness_mean"] is None else f"{row['groundedness_mean']:.2f}"
        assert cells[1:3] == ["1", grounded]
        assert cells[5].startswith("baseline 1/")  # one retrieval: the baseline window is filling
