"""Retrieval layer: loaders, chunker, embedder, Qdrant stores, hybrid retrieval, prompt assembly.

Knows nothing of the engine: it hands back text hits and token-free prompts.
"""

from rag.lock import StoreBusyError
from rag.prompt import RagPrompt, build_rag_prompt
from rag.service import RagService
from rag.settings import RagSettings
from rag.types import CollectionInfo, DocInfo, DocResult, Hit, IngestSummary

__all__ = [
    "CollectionInfo",
    "DocInfo",
    "DocResult",
    "Hit",
    "IngestSummary",
    "RagPrompt",
    "RagService",
    "RagSettings",
    "StoreBusyError",
    "build_rag_prompt",
]
