"""Bad input in every form field gets an inline error under that field: no crash, no request sent.

Driven with Pilot against the real server, which must be left exactly as it was. The dashboard
polls slowly here: the forms are the subject, and the CPU is shared.
"""

from __future__ import annotations

from textual.widgets import Static

from tests.tui.helpers import connected, dashboard, http_async, type_into
from tui.screens.ingest import IngestScreen
from tui.screens.new_key import NewKeyScreen

SIZE = (100, 30)


def error_of(app, field: str) -> str:
    return str(app.screen.query_one(f"#{field}-error", Static).render())


async def test_ingest_form_rejects_bad_input_inline(server, tmp_path):
    (tmp_path / "empty-dir").mkdir()
    (tmp_path / "data.bin").write_bytes(b"\x00\x01")
    good = tmp_path / "ok.md"
    good.write_text("A fine document.\n")
    cases = [
        ("docs", "", "path", "enter a file or directory path"),
        ("docs", "   ", "path", "enter a file or directory path"),
        ("docs", str(tmp_path / "missing.md"), "path", "no such file or directory"),
        ("docs", str(tmp_path / "empty-dir"), "path", "no .txt, .md, .html or .pdf files under"),
        ("docs", str(tmp_path / "data.bin"), "path", "unsupported file type '.bin'"),
        ("docs", f'"{good}', "path", "cannot read the paths"),
        ("", str(good), "collection", "enter a collection name"),
        ("bad name!", str(good), "collection", "a collection name is 1-64 letters"),
        ("-dash-first", str(good), "collection", "a collection name is 1-64 letters"),
        ("x" * 65, str(good), "collection", "a collection name is 1-64 letters"),
    ]
    _, before = await http_async(server, "GET", "/v1/collections")
    app = dashboard(server, interval_s=5.0)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await pilot.press("i")
        for collection, path, field, expected in cases:
            await type_into(pilot, "#collection", collection)
            await type_into(pilot, "#path", path)
            await pilot.press("enter")
            assert isinstance(app.screen, IngestScreen), (collection, path)
            assert expected in error_of(app, field), (collection, path, error_of(app, field))
            other = "path" if field == "collection" else "collection"
            assert error_of(app, other) == "", (collection, path, error_of(app, other))
        await pilot.press("escape")
        assert not isinstance(app.screen, IngestScreen)
        assert app.uploads == {} and app.return_code is None
    _, after = await http_async(server, "GET", "/v1/collections")
    assert after == before


async def test_new_key_form_rejects_bad_tenant_names_inline(server):
    cases = [("", "enter a tenant name"), ("   ", "enter a tenant name"),
             ("bad name!", "a tenant name is 1-64 letters"), ("_under", "a tenant name is 1-64 letters"),
             ("t" * 65, "a tenant name is 1-64 letters"), ("semi;colon", "a tenant name is 1-64 letters")]
    _, keys_before = await http_async(server, "GET", "/admin/keys")
    app = dashboard(server, interval_s=5.0)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        await pilot.press("k")
        for name, expected in cases:
            await type_into(pilot, "#tenant", name)
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, NewKeyScreen), name
            assert expected in error_of(app, "tenant"), (name, error_of(app, "tenant"))
        await pilot.press("escape")
    _, keys_after = await http_async(server, "GET", "/admin/keys")
    assert keys_after == keys_before
