"""kill -9 in the middle of an ingest, then a re-run: the store ends with exactly the right points.

The killed ingest runs in a real subprocess; small chunks and small embedding windows make sure
the kill lands while documents are half written. Checked on a first ingest and on a replacement
(every file changed, some growing and some shrinking, so stale chunks must disappear).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from rag.ids import make_doc_id, make_point_id
from rag.loaders import load_document
from rag.types import Scope
from tests.rag.ingest_worker import COLLECTION, TENANT, settings_from_json

REPO = Path(__file__).resolve().parents[2]
SETTINGS = json.dumps({"chunk_tokens": 32, "overlap_tokens": 8, "embed_window": 4})
NUM_FILES = 10
KILL_AFTER_WINDOWS = 6


def _write_corpus(root: Path, version: int) -> None:
    root.mkdir(exist_ok=True)
    for i in range(NUM_FILES):
        num_paragraphs = 3 + (i * 3 + version * 5) % 7  # differs per file and per version
        paragraphs = [
            f"Version {version} of document {i}, paragraph {p}: the lighthouse keeper logged the "
            f"tide at {p + i} o'clock and noted {version * 7 + p} gulls over the harbour wall."
            for p in range(num_paragraphs)
        ]
        (root / f"doc{i:02d}.txt").write_text("\n\n".join(paragraphs) + "\n")


def _expected(service, root: Path) -> dict[str, tuple[str, str]]:
    """point id -> (doc_id, chunk text), computed independently with the service's own chunker."""
    expected = {}
    for path in sorted(root.iterdir()):
        source = str(path.resolve())
        doc_id = make_doc_id(TENANT, COLLECTION, source)
        loaded = load_document(source, path.read_bytes())
        for chunk in service.chunker.chunk(loaded.text, doc_id, source, loaded.title):
            expected[make_point_id(doc_id, chunk.chunk_index)] = (doc_id, chunk.text)
    return expected


def _ingest_and_kill(data_dir: Path, corpus: Path) -> list[str]:
    cmd = [sys.executable, "-m", "tests.rag.ingest_worker", str(data_dir), str(corpus), SETTINGS]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if sum(1 for seen in lines if seen.startswith("advance")) >= KILL_AFTER_WINDOWS:
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"worker was not killed mid-ingest: {lines}"
    assert not any(line.startswith("done") for line in lines)
    return lines


def _assert_exact(service, corpus: Path) -> None:
    expected = _expected(service, corpus)
    records = service.store.records(Scope(TENANT, COLLECTION))
    assert set(records) == set(expected)
    assert {pid: (r["doc_id"], r["text"]) for pid, r in records.items()} == expected
    docs = service.list_documents(TENANT, COLLECTION)
    assert len(docs) == NUM_FILES and all(d.status == "ready" for d in docs)


def test_kill_during_ingest_then_rerun_leaves_exactly_the_expected_points(open_service, tmp_path):
    corpus, data_dir = tmp_path / "corpus", tmp_path / "data"
    # Same stored layout as the worker; bigger embedding windows (not part of it) keep the re-runs quick.
    settings = replace(settings_from_json(SETTINGS), embed_window=64)
    _write_corpus(corpus, version=1)

    # 1. First ingest killed half-way; the re-run completes it.
    lines = _ingest_and_kill(data_dir, corpus)
    num_finished = sum(1 for line in lines if line.startswith("file added"))
    service = open_service(data_dir=data_dir, settings=settings)
    summary = service.ingest_paths([corpus], TENANT, COLLECTION)
    assert summary.num_failed == 0
    # Files finalised before the kill are skipped (the worker may have finished one more than it
    # managed to report); the rest are redone.
    assert num_finished <= summary.num_skipped < NUM_FILES
    assert summary.num_added == NUM_FILES - summary.num_skipped
    _assert_exact(service, corpus)
    service.close()

    # 2. Every file changes; the replacing ingest is killed half-way; the re-run converges on v2.
    _write_corpus(corpus, version=2)
    _ingest_and_kill(data_dir, corpus)
    service = open_service(data_dir=data_dir, settings=settings)
    summary = service.ingest_paths([corpus], TENANT, COLLECTION)
    assert summary.num_failed == 0 and summary.num_added == 0
    _assert_exact(service, corpus)
    assert not any(
        "Version 1" in r["text"] for r in service.store.records(Scope(TENANT, COLLECTION)).values()
    )
