"""Where a running appliance is and which key to use: shared by the commands that talk to one."""

from __future__ import annotations

import argparse
import os
from urllib.parse import urlparse

from appliance.cli import UserError

DEFAULT_URL = "http://127.0.0.1:8080"


def server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None,
                   help=f"the appliance's base URL (APPLIANCE_URL, default {DEFAULT_URL})")
    p.add_argument("--api-key", default=None,
                   help="an admin key (APPLIANCE_API_KEY, else APPLIANCE_ADMIN_KEY)")


def url_and_key(args: argparse.Namespace, who: str) -> tuple[str, str]:
    """(url, admin key) from the flags and the environment; UserError names what is wrong."""
    url = (args.url or os.environ.get("APPLIANCE_URL") or DEFAULT_URL).rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UserError(f"--url must look like http://HOST:PORT, not {url!r}")
    key = args.api_key or os.environ.get("APPLIANCE_API_KEY") or os.environ.get("APPLIANCE_ADMIN_KEY")
    if not key:
        raise UserError(f"{who} needs an admin key: pass --api-key or set APPLIANCE_API_KEY")
    return url, key
