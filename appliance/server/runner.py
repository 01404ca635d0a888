"""Running the server process: listen, load, serve until SIGTERM/SIGINT, then drain and exit.

Drain: stop admitting (503 + Retry-After, /health 503), let in-flight requests finish within the
drain timeout, abort what is left (their streams end with an error event), then close the listener,
the retrieval store, the engine and the control store, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import sys
from collections.abc import Callable

from aiohttp import web

from appliance.server.app import create_app, load_components, sample_rates
from appliance.server.canary_guard import guard_canary
from appliance.server.config import ServerConfig
from appliance.server.state import STATE, AppState
from appliance.server.tls import ssl_context

log = logging.getLogger(__name__)
ABORT_GRACE_S = 5.0


async def drain(state: AppState, timeout: float) -> bool:
    """True when every request finished on its own; False when some had to be aborted."""
    state.admission.is_draining = True
    log.info("draining: %d requests in flight, up to %.0f s", state.admission.num_active, timeout)
    if await state.admission.wait_idle(timeout):
        return True
    tickets = list(state.admission.tickets.values())
    log.warning("drain timeout: aborting %d engine requests", len(tickets))
    for ticket in tickets:
        ticket.abort_reason = "server_shutting_down"
        if state.fleet is not None:
            state.fleet.abort_everywhere(ticket.request_id)
    await state.admission.wait_idle(ABORT_GRACE_S)
    return False


async def serve(config: ServerConfig, on_listening: Callable[[str], None] | None = None,
                stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set); returns the exit code (0 after a clean drain)."""
    tls = ssl_context(config)  # a bad certificate or key fails here, before anything is loaded
    app = create_app(config)
    state = app[STATE]
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=ABORT_GRACE_S)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, ssl_context=tls)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await asyncio.to_thread(state.control.close)
        state.store.close()
        raise OSError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    url = _bound_url(site, config, tls)
    if on_listening is not None:
        on_listening(url)
    stop = stop or asyncio.Event()
    _install_signals(stop)
    loader = asyncio.create_task(load_components(state))
    sampler = asyncio.create_task(sample_rates(state))
    guard = asyncio.create_task(guard_canary(state))
    code = await _wait(stop, loader, state)
    if code == 0:
        await drain(state, config.drain_timeout_s)
    sampler.cancel()
    guard.cancel()
    await runner.cleanup()
    await _close(state)
    return code


async def _wait(stop: asyncio.Event, loader: asyncio.Task, state: AppState) -> int:
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({stopper, loader}, return_when=asyncio.FIRST_COMPLETED)
    if loader.done() and not loader.cancelled() and loader.exception() is not None:
        exc = loader.exception()
        state.load_error = " ".join(str(exc).split()) or type(exc).__name__
        stopper.cancel()
        print(f"appliance: error: cannot start: {state.load_error}", file=sys.stderr, flush=True)
        return 1
    if not loader.done():
        loader.cancel()  # stopped while loading: nothing in flight to drain
    await stopper
    return 0


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Loops that cannot take signal handlers (Windows' loop raises NotImplementedError, a loop
        # outside the main thread RuntimeError: the tests' in-process servers) are stopped through
        # `stop` by their owner instead.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def _bound_url(site: web.TCPSite, config: ServerConfig, tls: ssl.SSLContext | None) -> str:
    server = site._server
    port = config.port
    if server is not None and getattr(server, "sockets", None):
        port = server.sockets[0].getsockname()[1]
    host = config.host if ":" not in config.host else f"[{config.host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


async def _close(state: AppState) -> None:
    await asyncio.to_thread(state.control.close)  # every request has ended: write all audit rows
    if state.rag is not None:
        await asyncio.to_thread(state.rag.close)
    if state.fleet is not None:
        await state.fleet.close()
    state.store.close()
    log.info("stopped")
