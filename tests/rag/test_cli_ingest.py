"""`appliance ingest` as a user runs it: bad files reported one line each, the rest lands; a store
owned by another process is refused with a hint; errors never show a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.types import Scope
from tests.rag.cli import appliance, can_make_unreadable_files
from tests.rag.conftest import APOLLO_PDF, ZEBRA_TXT

BAD_FILES = {
    "junk.pdf": (bytes(range(256)) * 8, "not a PDF file"),
    "empty.txt": (b"", "empty file"),
    "latin1.txt": ("Café crème brûlée".encode("latin-1"), "not UTF-8 text"),
    "binary.md": (b"\x00\x01\x02\x03" * 64, "binary data"),
}


def test_bad_files_are_reported_and_skipped_and_the_rest_lands(tmp_path, open_service):
    corpus, data_dir = tmp_path / "corpus", tmp_path / "data"
    corpus.mkdir()
    (corpus / "zebra.txt").write_text(ZEBRA_TXT)
    (corpus / "apollo.pdf").write_bytes(APOLLO_PDF)
    expected = dict(BAD_FILES)
    for name, (data, _) in BAD_FILES.items():
        (corpus / name).write_bytes(data)
    if can_make_unreadable_files():
        (corpus / "locked.txt").write_text("secret")
        (corpus / "locked.txt").chmod(0)
        expected["locked.txt"] = (b"", "permission denied")
    data_dir.mkdir()
    result = appliance(
        "ingest",
        str(corpus),
        "--tenant",
        "t1",
        "--collection",
        "c1",
        "--data-dir",
        str(data_dir),
        "--quiet",
        "--json",
        drop_file_bypass=True,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    for name, (_, reason) in expected.items():
        lines = [line for line in result.stderr.splitlines() if line.startswith(f"failed: {corpus / name}: ")]
        assert len(lines) == 1 and reason in lines[0], (name, result.stderr)
    assert f"added 2, skipped 0 unchanged, replaced 0, failed {len(expected)};" in result.stderr
    statuses = {Path(r["source"]).name: r["status"] for r in json.loads(result.stdout)["results"]}
    assert statuses == {"zebra.txt": "added", "apollo.pdf": "added", **{n: "failed" for n in expected}}
    service = open_service(data_dir=data_dir)
    assert {Path(d.source).name for d in service.list_documents("t1", "c1")} == {"zebra.txt", "apollo.pdf"}
    assert (
        Path(service.retrieve("t1", "c1", "When did Apollo 11 land?", top_k=1)[0].source).name == "apollo.pdf"
    )
    assert service.store.records(Scope("t1", "c1"))


def test_ingest_refuses_a_store_owned_by_another_process(tmp_path, open_service):
    data_dir = tmp_path / "data"
    open_service(data_dir=data_dir)  # stands in for a running server: it holds the store
    (tmp_path / "a.txt").write_text("hello")
    result = appliance(
        "ingest",
        str(tmp_path / "a.txt"),
        "--tenant",
        "t",
        "--collection",
        "c",
        "--data-dir",
        str(data_dir),
        "--quiet",
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "in use by another process" in result.stderr and "--url and --api-key" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--collection", "c"], "--tenant is required"),
        (["--collection", "no/slashes", "--tenant", "t"], "invalid collection name"),
        (["--collection", "c", "--url", "http://127.0.0.1:9"], "--url needs --api-key"),
        (["--collection", "c", "--tenant", "t", "--precompute-kv"], "--precompute-kv needs --url"),
        (["--collection", "c", "--tenant", "t", "--pin-kv"], "--pin-kv only goes with --precompute-kv"),
    ],
)
def test_usage_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "a.txt").write_text("hello")
    result = appliance("ingest", str(tmp_path / "a.txt"), "--data-dir", str(tmp_path / "d"), "--quiet", *args)
    assert result.returncode == 1
    assert result.stderr.startswith("appliance: error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1
