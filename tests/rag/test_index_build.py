"""The embedded store's index build: searches keep answering while it runs, writes made during it
survive the swap, and the shard ends up indexed (Qdrant Edge's own counters say so).

Real Qdrant Edge and real BM25 vectors; the dense vectors are random unit vectors, because what is
under test is the store, not the embedder (and embedding 8,000 chunks would take minutes here).
8,000 points of 384 dimensions is past Qdrant's default indexing threshold, so the build takes
seconds; on the old code the build ran in process holding the GIL and no search finished during it.
"""

from __future__ import annotations

import random
import threading
import time
import uuid

import numpy as np
import pytest

from rag.sparse import Bm25Encoder
from rag.store.base import ChunkPoint, HybridParams
from rag.store.edge import EdgeStore
from rag.types import Scope

DIM, NUM_POINTS = 384, 8000
SCOPE = Scope("acme", "kb")
# A search normally takes milliseconds; the old code made each one wait for the whole build (seconds).
SEARCH_WAIT_BOUND_S = 5.0


class Corpus:
    def __init__(self, num: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        words = random.Random(seed)
        vocab = [f"term{i}" for i in range(4000)]
        self.texts = [" ".join(words.choices(vocab, k=30)) for _ in range(num)]
        vectors = rng.standard_normal((num, DIM)).astype(np.float32)
        self.dense = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        self.ids = [str(uuid.UUID(int=rng.integers(1 << 62) << 64 | i)) for i in range(num)]
        bm25 = Bm25Encoder()
        self.sparse = bm25.embed_documents(self.texts)
        self.queries = [bm25.embed_query(text) for text in self.texts[:50]]

    def point(self, i: int) -> ChunkPoint:
        payload = {"doc_id": f"doc{i // 10}", "source": f"s{i // 10}.txt", "chunk_index": i % 10,
                   "text": self.texts[i], "content_sha256": "sha"}
        return ChunkPoint(self.ids[i], self.dense[i], self.sparse[i], payload)


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus(NUM_POINTS + 1)


def _fill(store: EdgeStore, corpus: Corpus, count: int) -> None:
    for start in range(0, count, 500):
        store.upsert(SCOPE, [corpus.point(i) for i in range(start, min(count, start + 500))])


def _search_top(store: EdgeStore, corpus: Corpus, i: int) -> str:
    hits = store.search(SCOPE, corpus.dense[i], corpus.queries[i], 3, HybridParams())
    return hits[0].id


class Searcher(threading.Thread):
    """Searches for known points over and over, recording (start, wait, right answer)."""

    def __init__(self, store: EdgeStore, corpus: Corpus) -> None:
        super().__init__(daemon=True)
        self.store, self.corpus = store, corpus
        self.done = threading.Event()
        self.samples: list[tuple[float, float, bool]] = []

    def run(self) -> None:
        n = 0
        while not self.done.is_set():
            i = n % len(self.corpus.queries)
            started = time.monotonic()
            right = _search_top(self.store, self.corpus, i) == self.corpus.ids[i]
            self.samples.append((started, time.monotonic() - started, right))
            n += 1
            time.sleep(0.01)


def _wait_for_copy(root) -> None:
    """Until the build has copied the shard: writes from now on land in its journal."""
    deadline = time.monotonic() + 30
    while not (root / "edge.build").exists() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_searches_answer_and_writes_survive_while_the_index_builds(tmp_path, corpus):
    store = EdgeStore(tmp_path / "edge", DIM)
    late = NUM_POINTS  # the extra point, written while the build runs
    try:
        _fill(store, corpus, NUM_POINTS)
        searcher = Searcher(store, corpus)
        searcher.start()
        time.sleep(0.2)
        began = time.monotonic()
        finished: list[float] = []
        builder = threading.Thread(target=lambda: (store.optimize(), finished.append(time.monotonic())))
        builder.start()  # optimize() returns once the built shard is swapped in
        _wait_for_copy(tmp_path)
        store.upsert(SCOPE, [corpus.point(late)])
        store.delete_document(SCOPE, "doc100")  # points 1000..1009 (searches look for 0..49)
        written = time.monotonic()
        builder.join(timeout=300)
        ended = finished[0]
        searcher.done.set()
        searcher.join(timeout=60)

        during = [s for s in searcher.samples if s[0] > began and s[0] + s[1] < ended]
        assert len(during) >= 3, f"no search finished during the {ended - began:.1f} s build"
        assert all(right for _, _, right in searcher.samples), "a search returned the wrong point"
        assert not builder.is_alive() and store.wait_indexed(timeout=1)
        assert written < ended - 0.05, "the build ended before the writes; make it bigger"
        worst, build_s = max(wait for _, wait, _ in searcher.samples), ended - began
        assert worst < SEARCH_WAIT_BOUND_S, f"a search waited {worst:.1f} s; the build took {build_s:.1f} s"
        info = store.shard_info()
        assert info.points_count == NUM_POINTS + 1 - 10
        # dense (HNSW) and sparse vectors of every point the build saw are indexed
        assert info.indexed_vectors_count >= 2 * (NUM_POINTS - 10)
        assert store.records(SCOPE, "doc100") == {}
    finally:
        store.close()
    reopened = EdgeStore(tmp_path / "edge", DIM)
    try:
        assert reopened.count(SCOPE) == NUM_POINTS + 1 - 10
        assert corpus.ids[late] in reopened.records(SCOPE, f"doc{late // 10}")
        assert _search_top(reopened, corpus, 20) == corpus.ids[20]
        leftovers = sorted(p.name for p in tmp_path.iterdir())
        assert leftovers == ["edge.1", "edge.current"], leftovers  # the old shard and the copy are gone
    finally:
        reopened.close()


def test_small_writes_do_not_start_a_build(tmp_path, corpus):
    store = EdgeStore(tmp_path / "edge", DIM)
    try:
        _fill(store, corpus, 100)
        store.request_index()
        assert not store.building and store.wait_indexed(timeout=1)
        assert not (tmp_path / "edge.current").exists()
    finally:
        store.close()


def test_closing_during_a_build_cancels_it_and_keeps_every_point(tmp_path, corpus):
    store = EdgeStore(tmp_path / "edge", DIM)
    try:
        _fill(store, corpus, NUM_POINTS)
        store.request_index()
        _wait_for_copy(tmp_path)
        assert store.building
    finally:
        store.close()  # kills the build's child process and waits for the indexer thread
    reopened = EdgeStore(tmp_path / "edge", DIM)
    try:
        assert reopened.count(SCOPE) == NUM_POINTS
        assert sorted(p.name for p in tmp_path.iterdir()) == ["edge"]  # the copy is gone, no pointer
        assert _search_top(reopened, corpus, 5) == corpus.ids[5]
    finally:
        reopened.close()
