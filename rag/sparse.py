"""BM25 term vectors, computed in process by Qdrant Edge's built-in BM25 model.

Documents get term-frequency weights saturated by (k, b, avg_len); queries get weight 1 per term;
the store applies IDF at query time (sparse vector with the IDF modifier), which together is BM25.
The same vectors feed both backends, so hybrid search ranks identically on Edge and on a server.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_AVG_LEN = 256.0


@dataclass(slots=True, frozen=True)
class SparseEmbedding:
    indices: list[int]
    values: list[float]


class Bm25Encoder:
    def __init__(self, avg_len: float = DEFAULT_AVG_LEN, k: float = 1.2, b: float = 0.75) -> None:
        import qdrant_edge

        config = qdrant_edge.Bm25Config(k=k, b=b, avg_len=avg_len, language="english")
        self._model = qdrant_edge.Bm25(config)

    def embed_documents(self, texts: list[str]) -> list[SparseEmbedding]:
        return [_convert(self._model.embed_document(text)) for text in texts]

    def embed_query(self, text: str) -> SparseEmbedding:
        return _convert(self._model.embed_query(text))


def _convert(vector) -> SparseEmbedding:
    return SparseEmbedding(indices=list(vector.indices), values=list(vector.values))
