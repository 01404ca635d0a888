"""Retrieval under load: hybrid search latency on the embedded store before and after its index
is built, and while a build runs. `python -m rag.bench_index --chunks 50000 --tenants 20`.

Chunks are written the way an HTTP upload writes them (`EdgeStore.upsert` per document of
`--doc-chunks` chunks, into 20 tenants' collections), which used to leave them all unindexed.
Dense vectors are random unit vectors of the embedder's 384 dimensions and texts are random words
(BM25 vectors from them): embedding 50k real chunks takes hours on a CPU, and search cost depends
on counts and dimensions, not on meaning. Query embedding is left out (it is the same in every
phase); each timed search is one tenant-filtered hybrid query (dense + BM25, RRF), top 5.

Phases: `unindexed` (what uploads used to leave), `during build` (a build started by
`request_index`, searches running alongside it), `indexed`, and `indexed + tail` (after a further
5% of uploads, under the build threshold, as the store stays between builds).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from rag.settings import RagSettings
from rag.sparse import Bm25Encoder
from rag.store.base import ChunkPoint
from rag.store.edge import EdgeStore
from rag.types import Scope

DIM = 384
VOCAB = [f"word{i}" for i in range(20000)]


class Workload:
    def __init__(self, tenants: int, doc_chunks: int, seed: int = 0) -> None:
        self.tenants, self.doc_chunks = tenants, doc_chunks
        self.rng, self.words = np.random.default_rng(seed), random.Random(seed)
        self.bm25 = Bm25Encoder()
        self.settings = RagSettings()
        self.docs = 0

    def upload(self, store: EdgeStore, chunks: int) -> None:
        for _ in range(0, chunks, self.doc_chunks):
            scope = Scope(f"tenant{self.docs % self.tenants}", "kb")
            store.upsert(scope, self._document(f"doc{self.docs}"))
            self.docs += 1

    def _document(self, doc_id: str) -> list[ChunkPoint]:
        texts = [" ".join(self.words.choices(VOCAB, k=120)) for _ in range(self.doc_chunks)]
        dense = self._unit(len(texts))
        sparse = self.bm25.embed_documents(texts)
        return [
            ChunkPoint(str(uuid.uuid4()), dense[i], sparse[i], {"doc_id": doc_id, "source": f"{doc_id}.txt",
                       "chunk_index": i, "text": text, "content_sha256": "0"})
            for i, text in enumerate(texts)
        ]

    def _unit(self, n: int) -> np.ndarray:
        vectors = self.rng.standard_normal((n, DIM)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def search_ms(self, store: EdgeStore) -> float:
        scope = Scope(f"tenant{self.words.randrange(self.tenants)}", "kb")
        sparse = self.bm25.embed_query(" ".join(self.words.choices(VOCAB, k=6)))
        dense = self._unit(1)[0]
        started = time.perf_counter()
        store.search(scope, dense, sparse, 5, self.settings.hybrid)
        return (time.perf_counter() - started) * 1000


def _stats(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"searches": len(ordered), "p50_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2), "max_ms": round(ordered[-1], 2)}


def _during_build(store: EdgeStore, work: Workload) -> tuple[dict, float]:
    store.request_index()
    started, samples = time.perf_counter(), []
    while store.building or not samples:
        samples.append(work.search_ms(store))
        time.sleep(0.01)
    return _stats(samples), time.perf_counter() - started


def run(chunks: int, tenants: int, doc_chunks: int, searches: int, root: Path) -> dict:
    work = Workload(tenants, doc_chunks)
    store = EdgeStore(root / "edge", DIM)
    try:
        started = time.perf_counter()
        work.upload(store, chunks)
        report = {"chunks": chunks, "tenants": tenants, "upload_s": round(time.perf_counter() - started, 1)}
        report["unindexed"] = _stats([work.search_ms(store) for _ in range(searches)])
        report["during_build"], build_s = _during_build(store, work)
        assert store.wait_indexed(), "the build did not finish"
        info = store.shard_info()
        report["build_s"] = round(build_s, 1)
        report["indexed_vectors"], report["points"] = info.indexed_vectors_count, info.points_count
        report["indexed"] = _stats([work.search_ms(store) for _ in range(searches)])
        work.upload(store, chunks // 20)
        report["indexed_plus_5pct_tail"] = _stats([work.search_ms(store) for _ in range(searches)])
        return report
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=50000)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--doc-chunks", type=int, default=10)
    parser.add_argument("--searches", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(args.chunks, args.tenants, args.doc_chunks, args.searches, Path(tmp)), indent=2))


if __name__ == "__main__":
    main()
