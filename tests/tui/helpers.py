"""Small helpers for driving the dashboard with Pilot and checking the real server behind it."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from textual.pilot import Pilot
from textual.widgets import Input

from tests.server.helpers import ADMIN_KEY, ServerProcess
from tui.app import DashboardApp
from tui.widgets.status_bar import ConnectionBanner, MessageLine

MAX_TYPED = 16


def dashboard(server: ServerProcess, key: str = ADMIN_KEY, interval_s: float = 0.5) -> DashboardApp:
    return DashboardApp(server.url, key, poll_interval_s=interval_s)


async def wait_until(pilot: Pilot, predicate: Callable[[], bool], what: str | Callable[[], str],
                     timeout_s: float = 60.0) -> None:
    """Let the app run until `predicate()` holds; fail with `what` (a callable: evaluated then) and
    the screen's last words."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            app = pilot.app
            what = what() if callable(what) else what
            raise AssertionError(f"timed out waiting for {what}; message={message(app)!r} "
                                 f"banner={app.query_one(ConnectionBanner).message!r}")
        await pilot.pause(0.1)


def message(app: DashboardApp) -> str:
    return app.query_one(MessageLine).message


async def connected(pilot: Pilot) -> None:
    await wait_until(pilot, lambda: pilot.app.last_poll is not None, "the first poll")


async def type_into(pilot: Pilot, selector: str, text: str) -> None:
    """Focus an input of the current screen and enter `text`: short text key by key; a long one
    (a path) is pasted, as a key press per character costs a screen update on a busy CPU."""
    field = pilot.app.screen.query_one(selector, Input)
    field.focus()
    field.value = "" if len(text) <= MAX_TYPED else text
    await pilot.pause()
    if len(text) <= MAX_TYPED:
        await pilot.press(*text)


def http(server: ServerProcess, method: str, path: str, body: dict | None = None,
         key: str = ADMIN_KEY) -> tuple[int, dict]:
    """(status, JSON) of one request to the real server; errors come back, they do not raise."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    req = urllib.request.Request(server.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


async def http_async(server: ServerProcess, method: str, path: str, body: dict | None = None,
                     key: str = ADMIN_KEY) -> tuple[int, dict]:
    """The same request from a thread, so a Pilot test's event loop (and the app) keeps running."""
    return await asyncio.to_thread(http, server, method, path, body, key)


def complete(server: ServerProcess, prompt: str, max_tokens: int = 1,
             key: str = ADMIN_KEY) -> tuple[int, dict]:
    body = {"model": server.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
    return http(server, "POST", "/v1/completions", body, key)
