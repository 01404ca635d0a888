"""Plain data shared across the RAG package: what goes in (documents, chunks) and what comes out
(hits, per-document results, summaries, listings).

Everything here is a slotted dataclass with a `to_dict()` that yields the exact JSON shape of the
HTTP contract, so the server can hand these to `json.dumps` without knowing the fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

DocStatus = Literal["added", "skipped", "replaced", "failed"]
# Collection names travel in URL paths: keep them to a safe, portable alphabet.
COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(slots=True, frozen=True)
class Scope:
    """Who is asking and where: every store read and write is confined to one tenant's collection.

    Built once at the service boundary; the stores turn it into a mandatory payload filter, so no
    query can be expressed without a tenant.
    """

    tenant: str
    collection: str

    def __post_init__(self) -> None:
        if not isinstance(self.tenant, str) or not self.tenant.strip():
            raise ValueError("tenant must be a non-empty string")
        if not isinstance(self.collection, str) or not COLLECTION_NAME.fullmatch(self.collection):
            raise ValueError(
                f"invalid collection name {self.collection!r}: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )


@dataclass(slots=True, frozen=True)
class Chunk:
    """A piece of one document: `text == document_text[char_start:char_end]`."""

    doc_id: str
    source: str
    chunk_index: int
    char_start: int
    char_end: int
    text: str
    heading: str = ""


@dataclass(slots=True, frozen=True)
class Hit:
    """One retrieved chunk, shaped like an item of `/v1/rag/retrieve`'s `results`."""

    id: str
    doc_id: str
    source: str
    chunk_index: int
    text: str
    score: float
    char_start: int = 0
    char_end: int = 0

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "doc_id": self.doc_id,
            "source": self.source,
            "chunk_index": self.chunk_index,
            "text": self.text,
            "score": self.score,
        }


@dataclass(slots=True)
class DocResult:
    """What happened to one input file (one item of the upload response's `results`)."""

    source: str
    doc_id: str
    status: DocStatus
    chunks: int = 0
    error: str | None = None

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "doc_id": self.doc_id,
            "status": self.status,
            "chunks": self.chunks,
            "error": self.error,
        }


@dataclass(slots=True)
class IngestSummary:
    """Totals of one ingest run, plus every per-file result in input order."""

    results: list[DocResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: DocStatus) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def num_added(self) -> int:
        return self.count("added")

    @property
    def num_skipped(self) -> int:
        return self.count("skipped")

    @property
    def num_replaced(self) -> int:
        return self.count("replaced")

    @property
    def num_failed(self) -> int:
        return self.count("failed")

    @property
    def num_chunks(self) -> int:
        """Chunks embedded and written in this run (skipped files contribute none)."""
        return sum(r.chunks for r in self.results if r.status in ("added", "replaced"))

    def to_dict(self) -> dict:
        return {"results": [r.to_dict() for r in self.results]}


@dataclass(slots=True)
class DocInfo:
    """A document as the catalog knows it (one item of `GET .../documents`)."""

    doc_id: str
    source: str
    chunks: int
    content_sha256: str
    status: str
    updated_at: str

    def to_dict(self) -> dict:
        return {
            "doc_id": self.doc_id,
            "source": self.source,
            "chunks": self.chunks,
            "content_sha256": self.content_sha256,
            "status": self.status,
            "updated_at": self.updated_at,
        }


@dataclass(slots=True)
class CollectionInfo:
    name: str
    documents: int
    chunks: int

    def to_dict(self) -> dict:
        return {"name": self.name, "documents": self.documents, "chunks": self.chunks}
