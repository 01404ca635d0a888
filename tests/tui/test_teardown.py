"""A poll that ends after the dashboard has closed (its widgets gone) is dropped, not an error: CI saw
such a late poll fail `test_ingest_adds_documents_to_a_collection` with NoMatches at exit."""

from __future__ import annotations

from tests.tui.helpers import dashboard

SIZE = (100, 30)


async def test_a_poll_finishing_after_exit_is_dropped(server):
    app = dashboard(server, interval_s=60.0)
    async with app.run_test(size=SIZE):
        pass
    # the app has exited and its widgets are gone: a poll that completes now must not raise
    assert await app.refresh_now() is False
    app.show_disconnected("gone", "offline")
