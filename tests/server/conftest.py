"""One real server subprocess (real model, real Qdrant Edge, real SQLite) shared by the server tests."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from tests.server.helpers import ADMIN_KEY, ServerProcess, served


@pytest.fixture(scope="package")
def server(tmp_path_factory) -> ServerProcess:
    data_dir = tmp_path_factory.mktemp("appliance") / "data"
    with served(ServerProcess(data_dir)) as proc:
        yield proc


def admin_post(server: ServerProcess, path: str, body: dict) -> dict:
    req = urllib.request.Request(server.url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {ADMIN_KEY}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def make_tenant(server: ServerProcess, name: str, **limits) -> str:
    """Create a tenant through the admin API and return a fresh tenant key for it."""
    admin_post(server, "/admin/tenants", {"name": name, **limits})
    return admin_post(server, "/admin/keys", {"tenant": name})["key"]


@pytest.fixture(scope="package")
def run():
    """Run a coroutine to completion (tests stay plain functions; no event-loop fixtures needed)."""
    return asyncio.run
