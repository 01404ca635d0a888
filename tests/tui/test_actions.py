"""Every dashboard action, driven with Pilot against a real appliance server, checked on the server.

The server is the real one (real model, Qdrant Edge, SQLite) started once for tests/tui; each test
asserts the server's state changed the way the action claims (a document appears, the cache is
empty, admission is paused, the key authenticates), not only what the screen says.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.server.helpers import ADMIN_KEY, free_port
from tests.tui.helpers import (
    complete,
    connected,
    dashboard,
    http,
    http_async,
    message,
    type_into,
    wait_until,
)
from tui.app import DashboardApp
from tui.screens.help import HelpScreen
from tui.screens.ingest import IngestScreen
from tui.screens.new_key import KeyShownScreen, NewKeyScreen
from tui.widgets.admission_panel import AdmissionPanel
from tui.widgets.collections_table import CollectionsTable
from tui.widgets.kv_panel import KvPanel
from tui.widgets.status_bar import ConnectionBanner
from tui.widgets.tenants_table import TenantsTable

SIZE = (100, 30)
# About 150 tokens: nine full KV blocks of 16 that stay cached after the request ends.
LONG_PROMPT = ("The appliance keeps the KV cache of every full block of a prompt so that the next "
               "request with the same prefix skips its prefill. ") * 6


def total_chunks(documents_body: dict) -> int:
    return sum(d["chunks"] for d in documents_body["documents"])


async def test_ingest_adds_documents_to_a_collection(server, tmp_path):
    kb = tmp_path / "kb"
    (kb / "sub").mkdir(parents=True)
    (kb / "alpha.md").write_text("# Alpha\n\nThe alpha appliance ingests markdown files.\n")
    (kb / "sub" / "beta.txt").write_text("Beta notes: prefix caching saves prefill work.\n")
    (kb / "broken.pdf").write_bytes(b"\x00\x01 not a pdf at all")
    app = dashboard(server)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await pilot.press("i")
        assert isinstance(app.screen, IngestScreen)
        await type_into(pilot, "#collection", "kb-tui")
        await type_into(pilot, "#path", str(kb))
        await pilot.press("enter")
        await wait_until(pilot, lambda: message(app).startswith("ingested 3 files"), "the ingest", 180)
        # The broken PDF is reported, the two good files are in.
        assert "2 added" in message(app) and "1 failed" in message(app), message(app)
        assert "not a PDF" in message(app), message(app)
        status, body = await http_async(server, "GET", "/v1/collections/kb-tui/documents")
        assert status == 200, body
        by_name = {Path(d["source"]).name: d for d in body["documents"]}
        assert by_name["alpha.md"]["status"] == "ready" and by_name["beta.txt"]["status"] == "ready"
        assert by_name["alpha.md"]["chunks"] >= 1
        table = app.query_one(CollectionsTable)
        # A file the server could not read leaves no document behind; the message above reported it.
        await wait_until(pilot, lambda: ["kb-tui", "2", str(total_chunks(body)), "ready"] in table.cells(),
                         lambda: f"kb-tui in {table.cells()}")


async def test_flush_empties_the_prefix_cache(server):
    status, body = await http_async(server, "POST", "/v1/completions",
                                    {"model": server.model, "prompt": LONG_PROMPT, "max_tokens": 1})
    assert status == 200, body
    _, stats = await http_async(server, "GET", "/admin/stats")
    cached = stats["kv"]["cached_blocks"]
    assert cached > 0, stats["kv"]
    app = dashboard(server)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await pilot.press("f")
        await wait_until(pilot, lambda: message(app).startswith("prefix cache flushed"), "the flush")
        assert f"{cached} cached blocks freed" in message(app), (message(app), cached)
        _, after = await http_async(server, "GET", "/admin/stats")
        assert after["kv"]["cached_blocks"] == 0, after["kv"]
        kv = app.query_one(KvPanel)
        await wait_until(pilot, lambda: re.search(r"cached\s+0\s", kv.text) is not None, "cached 0 on screen")
    # Nothing of the prompt is left to hit: the same request computes its whole prefill again.
    status, again = await http_async(server, "POST", "/v1/completions",
                                     {"model": server.model, "prompt": LONG_PROMPT, "max_tokens": 1})
    assert status == 200 and again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0, again


async def test_pause_and_resume_admission(server):
    app = dashboard(server)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await connected(pilot)
            await pilot.press("p")
            await wait_until(pilot, lambda: message(app).startswith("admission paused"), "the pause")
            status, body = await http_async(server, "POST", "/v1/completions",
                                            {"model": server.model, "prompt": "Hi", "max_tokens": 1})
            assert status == 503 and body["error"]["code"] == "admission_paused", (status, body)
            panel = app.query_one(AdmissionPanel)
            await wait_until(pilot, lambda: "PAUSED" in panel.text, "PAUSED on screen")
            await pilot.press("p")
            await wait_until(pilot, lambda: message(app).startswith("admission resumed"), "the resume")
            _, stats = await http_async(server, "GET", "/admin/stats")
            assert stats["admission"]["paused"] is False
            await wait_until(pilot, lambda: "open" in panel.text, "open on screen")
    finally:
        http(server, "POST", "/admin/admission/resume")
    status, body = complete(server, "Hi")
    assert status == 200, body


async def test_new_key_for_a_new_tenant_is_shown_once_and_works(server):
    app = dashboard(server)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await pilot.press("k")
        assert isinstance(app.screen, NewKeyScreen)
        await type_into(pilot, "#tenant", "acme-tui")
        await pilot.click("#create-tenant")
        await pilot.click("#submit")
        await wait_until(pilot, lambda: isinstance(app.screen, KeyShownScreen), "the key screen")
        key = app.screen.new_key.key
        assert key in str(app.screen.query_one("#key-value").render())
        assert "API key created for tenant 'acme-tui' (new tenant)" in message(app)
        status, models = await http_async(server, "GET", "/v1/models", key=key)
        assert status == 200, models
        _, keys = await http_async(server, "GET", "/admin/keys?tenant=acme-tui")
        active = [(k["tenant"], k["role"], k["revoked_at"]) for k in keys["keys"]]
        assert active == [("acme-tui", "tenant", None)], keys
        await pilot.press("escape")
        assert not isinstance(app.screen, KeyShownScreen)
        tenants = app.query_one(TenantsTable)
        await wait_until(pilot, lambda: any(r[0] == "acme-tui" for r in tenants.cells()), "the tenant row")


async def test_new_key_for_an_unknown_tenant_is_refused_inline(server):
    app = dashboard(server)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await pilot.press("k")
        await type_into(pilot, "#tenant", "ghost-tenant")
        await pilot.press("enter")
        error = app.screen.query_one("#tenant-error")
        await wait_until(pilot, lambda: "no tenant 'ghost-tenant'" in str(error.render()), "the inline error")
        assert isinstance(app.screen, NewKeyScreen)  # still open, for a correction
        _, keys = await http_async(server, "GET", "/admin/keys?tenant=ghost-tenant")
        assert keys["keys"] == []
        _, tenants = await http_async(server, "GET", "/admin/tenants")
        assert "ghost-tenant" not in {t["name"] for t in tenants["tenants"]}


async def test_help_screen_and_quit(server):
    app = dashboard(server)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = str(app.screen.query_one("#help-text").render())
        for key in ("i", "f", "p", "k", "q"):
            assert re.search(rf"^\s+{key}\s", text, re.M), (key, text)
        await pilot.press("f")  # the dashboard's keys are inert while a dialog is open
        assert isinstance(app.screen, HelpScreen) and message(app) == ""
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


async def test_wrong_key_is_said_plainly_and_retried(server):
    app = dashboard(server, key="not-a-valid-key", interval_s=0.2)
    async with app.run_test(size=SIZE) as pilot:
        banner = app.query_one(ConnectionBanner)
        await wait_until(pilot, lambda: app.num_polls >= 4, "several polls")
        assert "API key was rejected (401)" in banner.message, banner.message
        assert banner.has_class("-visible") and app.last_poll is None


async def test_unreachable_server_is_said_plainly_and_retried():
    app = DashboardApp(f"http://127.0.0.1:{free_port()}", ADMIN_KEY, poll_interval_s=0.2)
    async with app.run_test(size=SIZE) as pilot:
        banner = app.query_one(ConnectionBanner)
        await wait_until(pilot, lambda: app.num_polls >= 4, "several polls")
        assert "cannot connect to" in banner.message and "connection refused" in banner.message
        await pilot.press("f")  # an action against a dead server reports its error, no crash
        await wait_until(pilot, lambda: message(app).startswith("flush failed: cannot connect"), "the error")
