"""The Ask screen: against the real appliance, and as an SVG snapshot of a replayed answer.

Against the real server: the screen acts as the picked tenant through a key minted for it (listed by
the server while the screen is open, revoked when the operator switches tenant or leaves), the answer
streams from that tenant's collection, and the numbers on screen are the server's own (the audit row
of the same request). The snapshot replays frames recorded from a real answer (see ask_replay.py)
with a fixed clock, so the picture does not depend on timing.
"""

from __future__ import annotations

import itertools
import re

import aiohttp
from textual.pilot import Pilot
from textual.widgets import Select, Static

from appliance.commands.demo import SAMPLES
from tests.server.helpers import ADMIN_KEY, auth
from tests.tui.ask_replay import QUESTION, AskReplay
from tests.tui.helpers import connected, dashboard, http_async, type_into, wait_until
from tui.app import DashboardApp
from tui.ask_session import ASK_KEY_NAME
from tui.screens.ask import AskScreen

SIZE = (100, 30)
TENANT, COLLECTION = "asker", "bakery"
BAKERY_QUESTION = "Who runs the Brindle Street Bakery today?"


async def upload(url: str, key: str, collection: str, name: str) -> None:
    form = aiohttp.FormData()
    form.add_field("file", (SAMPLES / name).read_bytes(), filename=name)
    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/v1/collections/{collection}/documents", data=form, headers=auth(key)) as resp:
        assert resp.status == 200, await resp.text()


async def ask_keys(server, tenant: str) -> list[dict]:
    status, body = await http_async(server, "GET", f"/admin/keys?tenant={tenant}")
    assert status == 200, body
    return [k for k in body["keys"] if k["name"] == ASK_KEY_NAME]


def text_of(screen: AskScreen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


async def pick_tenant(pilot: Pilot, screen: AskScreen, tenant: str) -> None:
    """Pick `tenant` once the screen has loaded the tenants and acted as its first one."""
    def message() -> str:
        return text_of(screen, "#ask-message")

    select = screen.query_one("#ask-tenant", Select)
    await wait_until(pilot, lambda: screen.keys.tenant is not None and screen.keys.tenant == select.value,
                     lambda: f"the first tenant: {message()!r}")
    select.value = tenant
    await wait_until(pilot, lambda: message().startswith(f"asking as tenant {tenant!r}"),
                     lambda: f"acting as {tenant}: {message()!r}")


async def ask(pilot: Pilot, screen: AskScreen, question: str) -> None:
    await type_into(pilot, "#ask-question", question)
    await pilot.press("enter")
    def answered() -> bool:
        return screen.finished is not None or "failed" in text_of(screen, "#ask-message")

    await wait_until(pilot, answered, "the answer", 180)
    assert screen.finished is not None, text_of(screen, "#ask-message")


async def test_ask_as_a_tenant_streams_an_answer_with_the_servers_numbers(server):
    status, _ = await http_async(server, "POST", "/admin/tenants", {"name": TENANT})
    assert status in (201, 409)
    status, created = await http_async(server, "POST", "/admin/keys", {"tenant": TENANT})
    await upload(server.url, created["key"], COLLECTION, "brindle-street-bakery.txt")
    app = dashboard(server)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await pilot.press("a")
        screen = app.screen
        assert isinstance(screen, AskScreen)
        await pick_tenant(pilot, screen, TENANT)
        assert screen.query_one("#ask-collection", Select).value == COLLECTION
        minted = await ask_keys(server, TENANT)
        assert [k["revoked_at"] for k in minted] == [None], minted  # one live key while the screen is open

        await ask(pilot, screen, BAKERY_QUESTION)
        first = screen.finished
        assert screen.answer.strip() and screen.timing.ttft_s is not None
        assert {s.source for s in first.sources} == {"brindle-street-bakery.txt"}
        assert screen.answer.strip() in text_of(screen, "#ask-answer")
        _, audit = await http_async(server, "GET", "/admin/audit?limit=20")
        row = next(r for r in audit["entries"] if r["tenant"] == TENANT and r["route"] == "/v1/rag/query")
        assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == (
            first.prompt_tokens, first.cached_tokens, first.completion_tokens)
        stats = text_of(screen, "#ask-stats")
        assert f"prompt {first.prompt_tokens} tokens, {first.cached_tokens} cached" in stats, stats
        assert re.search(r"TTFT \d+\.\d\d s", stats), stats
        assert f"trace {screen.trace_id}" in stats if screen.trace_id else "trace —" in stats, stats

        await ask(pilot, screen, BAKERY_QUESTION)  # the same prompt again: served from the prefix cache
        assert screen.finished.cached_tokens > 0, screen.finished

        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, AskScreen), "back to the dashboard")
    minted = await ask_keys(server, TENANT)
    assert minted and all(k["revoked_at"] for k in minted), minted


async def test_ask_refuses_what_it_cannot_send_and_revokes_on_switch(server):
    status, _ = await http_async(server, "POST", "/admin/tenants", {"name": "empty-asker"})
    assert status in (201, 409)
    app = dashboard(server)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await pilot.press("a")
        screen = app.screen
        await pick_tenant(pilot, screen, "empty-asker")
        assert "has no collections yet" in text_of(screen, "#ask-message")
        assert len(await ask_keys(server, "empty-asker")) == 1
        await type_into(pilot, "#ask-question", "anything?")
        await pilot.press("enter")
        assert "pick a tenant and one of its collections first" in text_of(screen, "#ask-message")
        await type_into(pilot, "#ask-question", " ")
        await pilot.press("enter")
        assert "type a question first" in text_of(screen, "#ask-message")
        await pick_tenant(pilot, screen, "admin")  # the admin key itself: nothing minted
        assert "with the admin key" in text_of(screen, "#ask-message")
        assert [k["revoked_at"] is not None for k in await ask_keys(server, "empty-asker")] == [True]
        assert screen.keys.key is None


def fixed_clock(step_s: float = 0.25):
    """A clock that moves `step_s` each time it is read: the screen reads it at send, first text, end."""
    ticks = itertools.count()
    return lambda: next(ticks) * step_s


def test_ask_screen_snapshot(snap_compare):
    with AskReplay() as replay:
        app = DashboardApp(replay.url, ADMIN_KEY, autopoll=False)

        async def replayed_answer(pilot: Pilot) -> None:
            screen = AskScreen(app.ask_client, "acme", clock=fixed_clock())
            await app.push_screen(screen)
            await wait_until(pilot, lambda: screen.query_one("#ask-collection", Select).value == "handbook",
                             "the collection")
            await type_into(pilot, "#ask-question", QUESTION)
            await pilot.press("enter")
            await wait_until(pilot, lambda: screen.finished is not None, "the replayed answer")
            await pilot.pause()

        assert snap_compare(app, terminal_size=(80, 24), run_before=replayed_answer)
