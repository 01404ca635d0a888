"""`appliance dashboard [--url] [--api-key] [--ca-cert]`: the Textual control panel for an appliance.

The only place that imports tui/; the dashboard talks to the server over HTTP and needs an admin key.
`appliance demo` opens it through `open_in_process`, on the event loop its own server runs on.
"""

from __future__ import annotations

import argparse
import os

from appliance.cli import UserError
from appliance.commands.remote import server_arguments, url_and_key


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dashboard", help="terminal dashboard: KV cache, throughput, latency, actions")
    server_arguments(p)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls (default 1)")
    p.add_argument("--ca-cert", default=None,
                   help="PEM file to verify an https server with (APPLIANCE_CA_CERT; e.g. its self-signed "
                        "certificate)")
    p.set_defaults(func=run)


def resolve(args: argparse.Namespace) -> tuple[str, str, float]:
    """(url, key, interval) from the flags and the environment; UserError names what is wrong."""
    url, key = url_and_key(args, "the dashboard")
    if not 0.1 <= args.interval <= 3600:
        raise UserError("--interval must be between 0.1 and 3600 seconds")
    return url, key, args.interval


def ca_cert(args: argparse.Namespace) -> str | None:
    """The CA file for an https server, checked to be a readable PEM file (UserError otherwise)."""
    path = getattr(args, "ca_cert", None) or os.environ.get("APPLIANCE_CA_CERT") or None
    if path is None:
        return None
    import ssl

    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"cannot use --ca-cert {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return path


def run(args: argparse.Namespace) -> int:
    url, key, interval = resolve(args)
    ca = ca_cert(args)
    from tui.app import DashboardApp

    DashboardApp(url, key, poll_interval_s=interval, ca_cert=ca).run()
    return 0


async def open_in_process(url: str, key: str) -> None:
    """The dashboard on the running event loop (the demo's, beside its server), until it is quit."""
    from tui.in_process import InProcessDashboardApp

    await InProcessDashboardApp(url, key).run_async()
