"""Retrieval layer: loaders, chunker, embedder, Qdrant stores, hybrid retrieval, prompt assembly.

Knows nothing of the engine: it hands back text hits and token-free prompts. The names below are
imported on first use, so `import rag.types` (or a CLI that only validates names) stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CollectionInfo": "rag.types",
    "DocInfo": "rag.types",
    "DocResult": "rag.types",
    "Hit": "rag.types",
    "IngestSummary": "rag.types",
    "RagPrompt": "rag.prompt",
    "build_rag_prompt": "rag.prompt",
    "RagService": "rag.service",
    "RagSettings": "rag.settings",
    "StoreBusyError": "rag.lock",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rag' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
