"""A real aiohttp app on 127.0.0.1, served from a thread of its own.

For tests whose code under test runs its own event loop (the dashboard, an OTLP exporter) and needs
a server that answers while that loop runs: the recorded-frames appliances and the OTLP collector.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod

from aiohttp import web

from tests.server.helpers import free_port


class ThreadedApp(ABC):
    """`start()`/`stop()`, or `with App() as app:`; subclasses say what `build()` serves."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @abstractmethod
    def build(self) -> web.Application: ...

    def start(self):
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self.build())
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
