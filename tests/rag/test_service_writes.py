"""RagService writes under concurrency and erasure, with the real embedder and real stores:
HTTP-style uploads (`ingest_bytes`) leave the vector index built, collections ingest concurrently
while one collection serialises, and `delete_tenant` erases one tenant and nothing of another."""

from __future__ import annotations

import threading

import pytest

from rag.ingest import NullProgress
from rag.settings import RagSettings
from rag.types import Scope

# Generous: an upload of a few chunks embeds in well under a second on an idle CPU.
UPLOAD_WAIT_S = 120.0


def _article(topic: str, paragraphs: int = 1) -> str:
    """About 120 tokens a paragraph (a chunk holds up to 254)."""
    body = [
        f"{topic} paragraph {n}: " + " ".join(f"{topic} detail {n}-{k} about the subject." for k in range(12))
        for n in range(paragraphs)
    ]
    return f"# {topic}\n\n" + "\n\n".join(body) + "\n"


def test_uploaded_documents_leave_the_index_built(open_service):
    # Thresholds at their minimum, so one small upload is enough to call for a build.
    service = open_service(settings=RagSettings(index_min_chunks=1, index_fraction=0.0))
    result = service.ingest_bytes("acme", "kb", "volcanoes.md", _article("volcano", 5).encode())
    assert result.status == "added" and result.chunks >= 2
    assert service.wait_indexed(timeout=300)
    info = service.store.shard_info()
    assert info.points_count == result.chunks
    assert info.indexed_vectors_count == 2 * info.points_count  # dense (HNSW) and sparse, every chunk
    hits = service.retrieve("acme", "kb", "volcano detail 2-3", top_k=1)
    assert hits and hits[0].source == "volcanoes.md"


class BlockingProgress(NullProgress):
    """Holds the ingest inside its collection's lock until released (file_done runs under it)."""

    def __init__(self) -> None:
        self.inside, self.release = threading.Event(), threading.Event()

    def file_done(self, result) -> None:
        self.inside.set()
        assert self.release.wait(UPLOAD_WAIT_S)


def test_collections_ingest_concurrently_and_one_collection_serialises(open_service, tmp_path):
    service = open_service()
    (tmp_path / "a.md").write_text(_article("alpha"))
    blocker = BlockingProgress()
    holder = threading.Thread(target=service.ingest_paths, args=([tmp_path / "a.md"], "acme", "a"),
                              kwargs={"progress": blocker})
    holder.start()
    assert blocker.inside.wait(UPLOAD_WAIT_S)
    same, other = _Upload(service, "a", "beta"), _Upload(service, "b", "gamma")
    same.start()
    other.start()
    try:
        assert other.done.wait(UPLOAD_WAIT_S), "an upload to another collection waited for collection a"
        assert other.result.status == "added"
        assert not same.done.is_set(), "an upload to collection a ran while another ingest held it"
    finally:
        blocker.release.set()
        holder.join()
    assert same.done.wait(UPLOAD_WAIT_S) and same.result.status == "added"
    assert {d.source for d in service.list_documents("acme", "a")} >= {"beta.md"}


class _Upload(threading.Thread):
    def __init__(self, service, collection: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.service, self.collection, self.topic = service, collection, topic
        self.done, self.result = threading.Event(), None

    def run(self) -> None:
        try:
            data = _article(self.topic).encode()
            self.result = self.service.ingest_bytes("acme", self.collection, f"{self.topic}.md", data)
        finally:
            self.done.set()


def test_delete_tenant_erases_that_tenant_only(open_service, backend_url):
    service = open_service(qdrant_url=backend_url)
    for tenant in ("t1", "t2"):
        for collection, topic in (("kb", "zebra"), ("notes", "coffee")):
            service.ingest_bytes(tenant, collection, f"{topic}.md", _article(topic).encode())
    service.ingest_bytes("t1", "kb", "extra.md", _article("apollo").encode())
    chunks = {(t, c): service.store.count(Scope(t, c)) for t in ("t1", "t2") for c in ("kb", "notes")}
    t2_before = {c: service.list_documents("t2", c) for c in ("kb", "notes")}

    erased = service.delete_tenant("t1")

    assert erased == {"collections": 2, "documents": 3, "chunks": chunks["t1", "kb"] + chunks["t1", "notes"],
                      "collection_settings": 0}
    assert erased["chunks"] > 0
    assert service.list_collections("t1") == []
    assert all(service.store.count(Scope("t1", c)) == 0 for c in ("kb", "notes"))
    assert service.retrieve("t1", "kb", "zebra detail", top_k=3) == []
    assert {c: service.list_documents("t2", c) for c in ("kb", "notes")} == t2_before
    assert all(service.store.count(Scope("t2", c)) == chunks["t2", c] for c in ("kb", "notes"))
    assert service.retrieve("t2", "kb", "zebra detail", top_k=1)[0].source == "zebra.md"
    assert service.delete_tenant("t1") == {"collections": 0, "documents": 0, "chunks": 0,
                                           "collection_settings": 0}


def test_delete_tenant_rejects_an_empty_name(open_service):
    with pytest.raises(ValueError):
        open_service().delete_tenant(" ")
