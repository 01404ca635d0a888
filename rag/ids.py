"""Deterministic identities: the same tenant, collection and source always give the same doc_id,
and the same doc_id and chunk index always give the same point id. That is what makes a re-run
after a crash converge on exactly one copy of every chunk.
"""

from __future__ import annotations

import hashlib
import posixpath
import uuid

# Fixed namespaces (never change them: ids already stored depend on them).
DOC_NAMESPACE = uuid.UUID("6f1c6c3e-2d53-4c55-9a52-5b7f0f1d2a10")
POINT_NAMESPACE = uuid.UUID("0b8e1f52-8c1a-4f0e-b7a4-3f6f7a9d4c21")


def normalize_source(source: str) -> str:
    """Canonical spelling of a source path: forward slashes, no `.`/`..` segments, no trailing slash."""
    text = source.strip().replace("\\", "/")
    if not text:
        raise ValueError("source must be a non-empty path")
    normalized = posixpath.normpath(text)
    return normalized[2:] if normalized.startswith("./") else normalized


def make_doc_id(tenant: str, collection: str, source: str) -> str:
    key = "\x1f".join((tenant, collection, normalize_source(source)))
    return str(uuid.uuid5(DOC_NAMESPACE, key))


def make_point_id(doc_id: str, chunk_index: int) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"{doc_id}:{chunk_index}"))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
