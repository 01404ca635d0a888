"""RagService end to end with the real embedder, on both store backends (Qdrant Edge, and the
qdrant-client adapter in local mode): ingest, search, skip, replace, delete, list, isolation."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag import StoreBusyError
from rag.ids import make_doc_id
from rag.settings import SEARCH_MODES
from tests.rag.conftest import EXPECTED_TOP_HITS

T, C = "acme", "docs"


def _by_name(summary) -> dict[str, object]:
    return {Path(r.source).name: r for r in summary.results}


def test_mixed_folder_lands_and_search_finds_the_right_chunks(open_service, backend_url, mixed_folder):
    service = open_service(qdrant_url=backend_url)
    summary = service.ingest_paths([mixed_folder], T, C)
    assert (summary.num_added, summary.num_failed) == (4, 0), summary.results
    assert summary.num_chunks == sum(r.chunks for r in summary.results) > 0
    for query, (name, phrase) in EXPECTED_TOP_HITS.items():
        for mode in SEARCH_MODES:
            hits = service.retrieve(T, C, query, top_k=3, mode=mode)
            assert Path(hits[0].source).name == name, (query, mode, hits)
            assert phrase in hits[0].text
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_hits_carry_the_retrieve_api_shape(open_service, mixed_folder):
    service = open_service()
    service.ingest_paths([mixed_folder], T, C)
    hit = service.retrieve(T, C, "lunar module Eagle", top_k=1)[0]
    assert set(hit.to_dict()) == {"id", "doc_id", "source", "chunk_index", "text", "score"}
    assert hit.doc_id == make_doc_id(T, C, str((mixed_folder / "apollo.pdf").resolve()))
    assert hit.source == str((mixed_folder / "apollo.pdf").resolve())


def test_html_scripts_and_styles_are_never_indexed(open_service, mixed_folder):
    service = open_service()
    service.ingest_paths([mixed_folder], T, C)
    texts = [payload["text"] for payload in service.store.records(service_scope()).values()]
    assert any("Light roasts" in t for t in texts)
    assert not any("decoyword" in t or "color: red" in t for t in texts)


def service_scope():
    from rag.types import Scope

    return Scope(T, C)


def test_reingest_skips_every_unchanged_file(open_service, backend_url, mixed_folder):
    service = open_service(qdrant_url=backend_url)
    service.ingest_paths([mixed_folder], T, C)
    before = service.store.records(service_scope())
    again = service.ingest_paths([mixed_folder], T, C)
    assert again.num_skipped == 4 and again.num_chunks == 0
    assert service.store.records(service_scope()) == before


def test_changed_file_replaces_its_chunks_and_only_its_chunks(open_service, backend_url, mixed_folder):
    service = open_service(qdrant_url=backend_url)
    service.ingest_paths([mixed_folder], T, C)
    volcano = mixed_folder / "guide" / "deep" / "volcano.md"
    doc_id = make_doc_id(T, C, str(volcano.resolve()))
    others_before = {k: v for k, v in service.store.records(service_scope()).items() if v["doc_id"] != doc_id}
    volcano.write_text("# Volcanoes\n\nMount Etna in Sicily is among the most active volcanoes on Earth.\n")
    summary = service.ingest_paths([mixed_folder], T, C)
    assert _by_name(summary)["volcano.md"].status == "replaced"
    assert summary.num_skipped == 3
    records = service.store.records(service_scope(), doc_id)
    assert len(records) == _by_name(summary)["volcano.md"].chunks
    assert all("Etna" in r["text"] or r["chunk_index"] > 0 for r in records.values())
    assert not any("Eyjafjallajökull" in r["text"] for r in service.store.records(service_scope()).values())
    after = service.store.records(service_scope())
    assert {k: v for k, v in after.items() if v["doc_id"] != doc_id} == others_before
    hit = service.retrieve(T, C, "most active volcano in Sicily", top_k=1)[0]
    assert "Etna" in hit.text


def test_delete_removes_the_document_everywhere(open_service, backend_url, mixed_folder):
    service = open_service(qdrant_url=backend_url)
    service.ingest_paths([mixed_folder], T, C)
    doc_id = make_doc_id(T, C, str((mixed_folder / "apollo.pdf").resolve()))
    assert service.delete_document(T, C, doc_id) is True
    assert service.store.records(service_scope(), doc_id) == {}
    assert doc_id not in {d.doc_id for d in service.list_documents(T, C)}
    assert all(h.doc_id != doc_id for h in service.retrieve(T, C, "Apollo 11 Moon landing", top_k=10))
    assert service.delete_document(T, C, doc_id) is False
    assert service.ingest_paths([mixed_folder], T, C).num_added == 1  # comes back as new


def test_listings_report_documents_and_collections(open_service, mixed_folder):
    service = open_service()
    service.ingest_paths([mixed_folder], T, C)
    service.ingest_paths([mixed_folder / "notes"], T, "other")
    docs = service.list_documents(T, C)
    assert {Path(d.source).name for d in docs} == {"zebra.txt", "volcano.md", "page.html", "apollo.pdf"}
    assert all(d.status == "ready" and len(d.content_sha256) == 64 and d.chunks > 0 for d in docs)
    collections = {c.name: c for c in service.list_collections(T)}
    assert set(collections) == {C, "other"}
    assert collections[C].documents == 4 and collections[C].chunks == sum(d.chunks for d in docs)
    assert service.list_collections("nobody") == []


def test_ingest_bytes_is_idempotent_by_source(open_service):
    service = open_service()
    first = service.ingest_bytes(T, C, "uploads/./notes.txt", b"Tea is grown on the slopes of Darjeeling.")
    again = service.ingest_bytes(T, C, "uploads/notes.txt", b"Tea is grown on the slopes of Darjeeling.")
    changed = service.ingest_bytes(T, C, "uploads/notes.txt", b"Coffee is grown in the hills of Kerala.")
    assert (first.status, again.status, changed.status) == ("added", "skipped", "replaced")
    assert first.doc_id == again.doc_id == changed.doc_id
    bad = service.ingest_bytes(T, C, "uploads/bad.pdf", b"this is no pdf")
    assert bad.status == "failed" and "PDF" in bad.error
    assert [d.source for d in service.list_documents(T, C)] == ["uploads/notes.txt"]


def test_tenant_b_never_sees_tenant_a(open_service, backend_url, mixed_folder, tmp_path):
    service = open_service(qdrant_url=backend_url)
    service.ingest_paths([mixed_folder], "tenant-a", C)
    b_file = tmp_path / "b.txt"
    b_file.write_text("Tenant B keeps notes about growing tomatoes in greenhouses.")
    service.ingest_paths([b_file], "tenant-b", C)
    a_docs = {d.doc_id for d in service.list_documents("tenant-a", C)}
    for query in [*EXPECTED_TOP_HITS, "tomatoes", "Apollo zebra volcano coffee"]:
        for mode in SEARCH_MODES:
            hits = service.retrieve("tenant-b", C, query, top_k=10, mode=mode)
            assert all(h.doc_id not in a_docs for h in hits), (query, mode)
            assert all(Path(h.source).name == "b.txt" for h in hits)
    assert {Path(d.source).name for d in service.list_documents("tenant-b", C)} == {"b.txt"}
    victim = next(iter(a_docs))
    assert service.delete_document("tenant-b", C, victim) is False
    assert service.store.records(service_scope_for("tenant-a"), victim)


def service_scope_for(tenant: str):
    from rag.types import Scope

    return Scope(tenant, C)


def test_a_second_owner_of_the_data_dir_is_refused(open_service, tmp_path):
    open_service(data_dir=tmp_path / "shared-data")
    with pytest.raises(StoreBusyError, match="--url"):
        open_service(data_dir=tmp_path / "shared-data")


def test_bad_arguments_are_value_errors(open_service, mixed_folder):
    service = open_service()
    service.ingest_paths([mixed_folder], T, C)
    with pytest.raises(ValueError, match="mode"):
        service.retrieve(T, C, "zebra", mode="magic")
    with pytest.raises(ValueError, match="top_k"):
        service.retrieve(T, C, "zebra", top_k=0)
    with pytest.raises(ValueError, match="query"):
        service.retrieve(T, C, "   ")
    with pytest.raises(ValueError, match="tenant"):
        service.retrieve("", C, "zebra")
    with pytest.raises(ValueError, match="collection"):
        service.retrieve(T, "../etc", "zebra")
    # A query made only of stop words still answers (dense side carries it).
    assert service.retrieve(T, C, "the of and", top_k=2)
