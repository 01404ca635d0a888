"""`appliance demo`'s session (upload, RAG question, chat question, try-it lines) against the real server."""

from __future__ import annotations

import io
import shlex
import stat
from contextlib import closing

import pytest

from appliance.cli import UserError
from appliance.commands.demo import (
    SAMPLES,
    DemoKeys,
    DemoPlan,
    demo_session,
    pick_docs,
    print_dashboard_command,
)
from appliance.commands.demo_keys import ADMIN_KEY_NAME, admin_key_path, dashboard_key, tenant_key
from appliance.server.store import ControlStore
from tests.server.conftest import make_tenant


def test_demo_session_prints_answers_sources_and_curl_lines(server, run):
    key = make_tenant(server, "demo-session")
    docs, question = pick_docs(str(SAMPLES))
    assert [d.name for d in docs] == ["brindle-street-bakery.txt", "varnholm-lighthouse.txt"]
    out = io.StringIO()
    answers = run(demo_session(server.url, key, DemoPlan(docs, question, 24), out))
    text = out.getvalue()
    assert "added    brindle-street-bakery.txt" in text and "added    varnholm-lighthouse.txt" in text
    assert answers["rag"]["answer"].strip() and answers["chat"].strip()
    assert answers["rag"]["sources"][0]["source"] == "brindle-street-bakery.txt"
    assert "Sources:\n  [1] brindle-street-bakery.txt" in text
    assert f"curl {server.url}/v1/rag/query -H 'Authorization: Bearer {key}'" in text
    assert f"curl {server.url}/v1/chat/completions" in text
    # A second run finds the documents already there.
    again = io.StringIO()
    run(demo_session(server.url, key, DemoPlan(docs, question, 2), again))
    assert "skipped  brindle-street-bakery.txt" in again.getvalue()


def test_demo_refuses_a_folder_without_documents(tmp_path):
    with pytest.raises(UserError, match="no documents"):
        pick_docs(str(tmp_path))


def test_demo_admin_key_is_private_reused_and_rotated_when_it_stops_working(tmp_path):
    with closing(ControlStore.open(tmp_path)) as store:
        key = dashboard_key(store, tmp_path)
        path = admin_key_path(tmp_path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().strip() == key and store.authenticate(key).is_admin
        assert dashboard_key(store, tmp_path) == key  # a second `make run` reuses it
        store.revoke_key(store.authenticate(key).key_id)
        rotated = dashboard_key(store, tmp_path)  # revoked (e.g. `keys revoke`): a new one
        assert rotated != key and store.authenticate(rotated).is_admin
        path.chmod(0o644)  # readable by others: it may have leaked, so it is replaced and revoked
        replaced = dashboard_key(store, tmp_path)
        assert replaced != rotated and store.authenticate(rotated) is None
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        live = [k for k in store.list_keys("admin") if k["name"] == ADMIN_KEY_NAME and not k["revoked_at"]]
        assert len(live) == 1


def test_demo_tenant_key_replaces_the_previous_one(tmp_path):
    with closing(ControlStore.open(tmp_path)) as store:
        first, second = tenant_key(store), tenant_key(store)
        assert store.authenticate(first) is None and store.authenticate(second).tenant == "demo"


def test_demo_prints_the_dashboard_command_with_its_admin_key(tmp_path):
    out = io.StringIO()
    keys = DemoKeys("apk_tenant", "apk_0123456789ab_secret", admin_key_path(tmp_path))
    print_dashboard_command("http://127.0.0.1:8123", keys, out)
    line = out.getvalue().splitlines()[-1]
    argv = shlex.split(line)
    assert argv[1:] == ["dashboard", "--url", "http://127.0.0.1:8123", "--api-key", "apk_0123456789ab_secret"]
    assert str(admin_key_path(tmp_path).resolve()) in out.getvalue()
