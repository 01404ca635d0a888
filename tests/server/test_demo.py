"""`appliance demo`'s session (upload, RAG question, chat question, try-it lines) against the real server."""

from __future__ import annotations

import io

import pytest

from appliance.cli import UserError
from appliance.commands.demo import SAMPLES, DemoPlan, demo_session, pick_docs
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
