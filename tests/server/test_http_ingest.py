"""`appliance ingest --url` against a real `appliance serve` (real model, real store, real HTTP):
files go through the server's documents API, and the store-owning server locks local ingest out.
It uses the server tests' shared server (tests/server/conftest.py), under a tenant of its own."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.rag.cli import appliance
from tests.rag.conftest import APOLLO_PDF, VOLCANO_MD, ZEBRA_TXT
from tests.server.helpers import ADMIN_KEY, ServerProcess


def _post(server: ServerProcess, path: str, body: dict, key: str = ADMIN_KEY) -> dict:
    request = urllib.request.Request(
        server.url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def tenant_key(server) -> str:
    _post(server, "/admin/tenants", {"name": "docs-co"})
    return _post(server, "/admin/keys", {"tenant": "docs-co"})["key"]


def test_ingest_through_the_server_api(server, tenant_key, tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "zebra.txt").write_text(ZEBRA_TXT)
    (corpus / "sub" / "volcano.md").write_text(VOLCANO_MD)
    (corpus / "apollo.pdf").write_bytes(APOLLO_PDF)
    (corpus / "junk.pdf").write_bytes(b"definitely not a pdf")
    via_url = ["--url", server.url, "--api-key", tenant_key, "--collection", "manuals"]

    first = appliance("ingest", str(corpus), *via_url, "--quiet", "--json")
    assert first.returncode == 1 and "Traceback" not in first.stderr  # junk.pdf failed, the rest landed
    statuses = {Path(r["source"]).name: r["status"] for r in json.loads(first.stdout)["results"]}
    assert statuses == {
        "zebra.txt": "added",
        "volcano.md": "added",
        "apollo.pdf": "added",
        "junk.pdf": "failed",
    }
    assert f"failed: {corpus / 'junk.pdf'}: not a PDF file" in first.stderr

    again = appliance("ingest", str(corpus), *via_url, "--quiet", "--exclude", "junk.pdf")
    assert again.returncode == 0, again.stderr
    assert "added 0, skipped 3 unchanged, replaced 0, failed 0" in again.stderr

    hits = _post(
        server,
        "/v1/rag/retrieve",
        {"query": "When did Apollo 11 land?", "collection": "manuals", "top_k": 1},
        key=tenant_key,
    )["results"]
    assert Path(hits[0]["source"]).name == "apollo.pdf" and "20 July 1969" in hits[0]["text"]

    listed = appliance("documents", "list", *via_url, "--json")
    documents = json.loads(listed.stdout)["documents"]
    assert {Path(d["source"]).name for d in documents} == {"zebra.txt", "volcano.md", "apollo.pdf"}
    apollo = next(d for d in documents if d["source"].endswith("apollo.pdf"))
    deleted = appliance("documents", "delete", apollo["doc_id"], *via_url)
    assert deleted.returncode == 0 and f"deleted {apollo['doc_id']}" in deleted.stdout
    gone = appliance("documents", "delete", apollo["doc_id"], *via_url)
    assert gone.returncode == 1 and "not found" in gone.stderr


def test_local_ingest_is_locked_out_while_the_server_owns_the_store(server, tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    result = appliance(
        "ingest",
        str(tmp_path / "a.txt"),
        "--tenant",
        "t",
        "--collection",
        "c",
        "--data-dir",
        str(server.data_dir),
        "--quiet",
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "in use by another process" in result.stderr and "--url" in result.stderr


def test_a_bad_key_is_one_clear_line(server, tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    result = appliance(
        "ingest",
        str(tmp_path / "a.txt"),
        "--url",
        server.url,
        "--api-key",
        "wrong-key",
        "--collection",
        "c",
        "--quiet",
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "refused the API key (401)" in result.stderr
