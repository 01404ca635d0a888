"""Answer quality, retrieval drift and injection flags of every (tenant, collection).

rag_routes calls in twice per request. After a retrieval, `note_retrieval` only queues it: one
worker thread of the loop's executor at a time takes whatever queued up and records it off the
request path: the hits' injection markers (rag/injection.py), the best hit's score, and the
queries' embeddings, computed in one batch, with the drift reports they lead to (rag/drift.py), so
a reader (/admin/stats, /metrics, the alert rules) never waits for a model or a permutation test.
After an answer, `note_answer` scores it on the event loop (string work over the answer and its
chunks, about a millisecond; see rag/quality.py): the answer follows seconds of generation.

Everything is in memory: the counts and the drift baselines start over with the server. The
numbers leave through `snapshot()` (the "quality" object of /admin/stats) and `metric_families()`
(rendered by metrics.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

import numpy as np

from rag.drift import DriftReport, DriftSettings, ScopeDrift
from rag.injection import injection_markers
from rag.prompt import canonical_order
from rag.quality import AnswerQuality, answer_quality
from rag.types import Hit

if TYPE_CHECKING:
    from appliance.server.state import AppState

log = logging.getLogger(__name__)
ScopeKey = tuple[str, str]  # (tenant, collection)
MAX_PENDING = 1024  # retrievals waiting for the worker; the oldest go first when it overflows
NUM_RECENT_FLAGS = 5  # flagged chunks remembered per scope, to point the operator at them


@dataclass(slots=True)
class AnswerTally:
    num_answers: int = 0
    num_scored: int = 0  # answers with a groundedness (not abstentions, not wordless)
    groundedness_sum: float = 0.0
    num_idk: int = 0
    num_cited: int = 0  # answers citing at least one source
    num_invalid_citations: int = 0  # answers citing a label no source has

    def add(self, quality: AnswerQuality) -> None:
        self.num_answers += 1
        if quality.groundedness is not None:
            self.num_scored += 1
            self.groundedness_sum += quality.groundedness
        self.num_idk += quality.is_idk
        self.num_cited += quality.has_citations
        self.num_invalid_citations += not quality.citations_valid

    def merge(self, other: AnswerTally) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict:
        mean = self.groundedness_sum / self.num_scored if self.num_scored else None
        return {"num_answers": self.num_answers, "num_scored": self.num_scored, "groundedness_mean": mean,
                "num_idk": self.num_idk, "num_cited": self.num_cited,
                "num_invalid_citations": self.num_invalid_citations}


@dataclass(slots=True)
class InjectionTally:
    num_chunks: int = 0  # retrieved chunks checked (a chunk counts each time it is retrieved)
    num_flagged: int = 0
    markers: dict[str, int] = field(default_factory=dict)
    recent: deque[dict] = field(default_factory=lambda: deque(maxlen=NUM_RECENT_FLAGS))

    def add(self, hit: Hit, markers: list[str]) -> None:
        self.num_chunks += 1
        if not markers:
            return
        self.num_flagged += 1
        for name in markers:
            self.markers[name] = self.markers.get(name, 0) + 1
        self.recent.append({"doc_id": hit.doc_id, "source": hit.source, "chunk_index": hit.chunk_index,
                            "markers": markers})

    def to_dict(self) -> dict:
        return {"num_chunks": self.num_chunks, "num_flagged": self.num_flagged,
                "markers": dict(sorted(self.markers.items())), "recent": list(self.recent)}


@dataclass(slots=True, frozen=True)
class Retrieval:
    """One retrieval waiting for the worker."""

    key: ScopeKey
    mode: str
    query: str
    hits: list[Hit]


@dataclass(slots=True, frozen=True)
class MetricFamily:
    """One Prometheus metric: samples are (name suffix, labels, value)."""

    name: str
    kind: str
    help: str
    samples: list[tuple[str, dict[str, str], float]]


class QualityStats:
    """Thread-safe: observed on the event loop, recorded by a worker thread, read anywhere."""

    def __init__(self, drift_settings: DriftSettings | None = None) -> None:
        self.drift_settings = drift_settings or DriftSettings()
        self._lock = threading.Lock()
        self._answers: dict[ScopeKey, AnswerTally] = {}
        self._injection: dict[ScopeKey, InjectionTally] = {}
        self._drift: dict[ScopeKey, ScopeDrift] = {}
        self._pending: deque[Retrieval] = deque(maxlen=MAX_PENDING)
        self._is_working = False
        self._num_recording = 0  # retrievals the worker has taken and not yet recorded

    def observe_retrieval(self, key: ScopeKey, mode: str, query: str, hits: list[Hit]) -> bool:
        """Queue a retrieval for the worker (all the event loop does); True when the caller should
        start `process_pending` (no worker is running)."""
        with self._lock:
            self._pending.append(Retrieval(key, mode, " ".join(query.split()), hits))
            start, self._is_working = not self._is_working, True
        return start

    def observe_answer(self, key: ScopeKey, answer: str, sources: list[str]) -> AnswerQuality:
        """`sources`: the chunk texts in the order the prompt numbered them."""
        quality = answer_quality(answer, sources)
        with self._lock:
            self._answers.setdefault(key, AnswerTally()).add(quality)
        return quality

    def _scope_drift(self, key: ScopeKey) -> ScopeDrift:
        if key not in self._drift:
            self._drift[key] = ScopeDrift(self.drift_settings)
        return self._drift[key]

    def process_pending(self, embed: Callable[[list[str]], np.ndarray]) -> None:
        """Worker thread: until the queue is empty, record what queued up: the hits' injection
        markers, the best scores, the queries' embeddings (one batch) and the drift they lead to."""
        while True:
            with self._lock:
                batch = list(self._pending)
                self._pending.clear()
                self._num_recording = len(batch)
                if not batch:
                    self._is_working = False
                    return
            try:
                self._record(batch, embed)
            except Exception:
                log.exception("recording %d retrievals for the quality numbers failed", len(batch))

    def _record(self, batch: list[Retrieval], embed: Callable[[list[str]], np.ndarray]) -> None:
        found = [[injection_markers(hit.text) for hit in r.hits] for r in batch]
        with self._lock:
            for retrieval, markers in zip(batch, found, strict=True):
                tally = self._injection.setdefault(retrieval.key, InjectionTally())
                for hit, names in zip(retrieval.hits, markers, strict=True):
                    tally.add(hit, names)
                if retrieval.hits:
                    self._scope_drift(retrieval.key).add_score(retrieval.mode, retrieval.hits[0].score)
        vectors = embed([r.query for r in batch])
        rows: dict[ScopeKey, list[int]] = {}
        for i, retrieval in enumerate(batch):
            rows.setdefault(retrieval.key, []).append(i)
        for key, indexes in rows.items():
            with self._lock:
                drift = self._scope_drift(key)
            windows, report = drift.with_queries(vectors[indexes])  # the costly part, without the lock
            with self._lock:
                drift.set_queries(windows, report)

    def drifted_scopes(self) -> list[ScopeKey]:
        """(tenant, collection) of every scope whose retrieval traffic has drifted from its baseline."""
        with self._lock:
            return sorted(key for key, drift in self._drift.items() if drift.drifted)

    @property
    def backlog(self) -> int:
        """Retrievals observed and not yet recorded by the worker."""
        with self._lock:
            return len(self._pending) + self._num_recording

    def _views(self) -> tuple[dict[ScopeKey, AnswerTally], dict[ScopeKey, dict], dict[ScopeKey, list]]:
        """Copies of the answer tallies, the injection tallies (as dicts) and the drift reports."""
        with self._lock:
            answers = {key: replace(tally) for key, tally in sorted(self._answers.items())}
            injection = {key: tally.to_dict() for key, tally in sorted(self._injection.items())}
            drift = {key: scope.reports() for key, scope in sorted(self._drift.items())}
        return answers, injection, drift

    def snapshot(self) -> dict:
        """The "quality" object of /admin/stats (shape: docs/api.md)."""
        answers, injection, drift = self._views()
        total = AnswerTally()
        for tally in answers.values():
            total.merge(tally)
        s = self.drift_settings
        return {
            "answers": {**total.to_dict(), "scopes": [{**_scope(key), **tally.to_dict()}
                                                      for key, tally in answers.items()]},
            "drift": [{**_scope(key), **report.to_dict()} for key, reports in drift.items()
                      for report in reports],
            "drift_settings": {"baseline_size": s.baseline_size, "window_size": s.window_size,
                               "min_window": s.min_window, "alpha": s.alpha},
            "injection": [{**_scope(key), **tally} for key, tally in injection.items()],
            "backlog": self.backlog,
        }

    def metric_families(self) -> list[MetricFamily]:
        answers, injection, drift = self._views()

        def per_scope(name: str, help_: str, values: dict[ScopeKey, float]) -> MetricFamily:
            return MetricFamily(name, "counter", help_, [("", _scope(k), v) for k, v in values.items()])

        def answer_counts(name: str, help_: str, field_: str) -> MetricFamily:
            return per_scope(name, help_, {k: getattr(t, field_) for k, t in answers.items()})

        grounded = [(suffix, _scope(key), value) for key, t in answers.items()
                    for suffix, value in (("_sum", t.groundedness_sum), ("_count", t.num_scored))]
        markers = [("", {**_scope(key), "marker": name}, n) for key, t in injection.items()
                   for name, n in t["markers"].items()]
        return [
            answer_counts("rag_answers_total", "RAG answers scored.", "num_answers"),
            answer_counts("rag_answers_idk_total", "RAG answers saying the sources do not hold the answer.",
                          "num_idk"),
            answer_counts("rag_answers_cited_total", "RAG answers citing at least one source.", "num_cited"),
            answer_counts("rag_answers_invalid_citations_total", "RAG answers citing a source label that "
                          "does not exist.", "num_invalid_citations"),
            MetricFamily("rag_answer_groundedness", "summary", "Share of an answer's content words found "
                         "in its retrieved sources (abstentions excluded).", grounded),
            per_scope("rag_retrieved_chunks_total", "Retrieved chunks checked for injection markers.",
                      {k: t["num_chunks"] for k, t in injection.items()}),
            per_scope("rag_injection_flagged_chunks_total", "Retrieved chunks carrying instruction-like "
                      "text.", {k: t["num_flagged"] for k, t in injection.items()}),
            MetricFamily("rag_injection_markers_total", "counter", "Injection markers found in retrieved "
                         "chunks, by marker.", markers),
            *_drift_families(drift),
        ]


def _scope(key: ScopeKey) -> dict[str, str]:
    return {"tenant": key[0], "collection": key[1]}


def _drift_families(drift: dict[ScopeKey, list[DriftReport]]) -> list[MetricFamily]:
    ready = [(key, r) for key, reports in drift.items() for r in reports if r.statistic is not None]

    def labels(key: ScopeKey, report: DriftReport) -> dict[str, str]:
        return {**_scope(key), "signal": report.signal, "mode": report.mode or ""}

    return [
        MetricFamily("retrieval_drift_statistic", "gauge", "Drift statistic of a scope's recent retrievals "
                     "against its baseline (KS D for top_score, mean-embedding MMD^2 for query_embedding).",
                     [("", labels(key, r), r.statistic) for key, r in ready]),
        MetricFamily("retrieval_drift_threshold", "gauge", "Value of the drift statistic above which the "
                     "signal has drifted.", [("", labels(key, r), r.threshold) for key, r in ready]),
        MetricFamily("retrieval_drifted", "gauge", "1 when any drift signal of the scope is past its "
                     "threshold.", [("", _scope(key), float(any(r.drifted for r in reports)))
                                    for key, reports in drift.items()]),
    ]


def note_retrieval(state: AppState, tenant: str, collection: str, mode: str | None, query: str,
                   hits: list[Hit]) -> None:
    """After a retrieval (event loop): queue it, and start the worker if none is running."""
    rag = state.need_rag()
    quality = state.metrics.quality
    if quality.observe_retrieval((tenant, collection), mode or rag.settings.default_mode, query, hits):
        asyncio.get_running_loop().run_in_executor(None, quality.process_pending, rag.embedder.embed)


def note_answer(state: AppState, tenant: str, collection: str, answer: str, hits: list[Hit],
                version: str | None = None) -> None:
    """After an answer is complete: score it against the chunks in the prompt's [n] order, for its
    scope and for the model version that wrote it."""
    sources = [hit.text for hit in canonical_order(hits)]
    quality = state.metrics.quality.observe_answer((tenant, collection), answer, sources)
    if version is not None:
        state.version_metrics.answered(version, quality)

