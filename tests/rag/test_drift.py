"""Retrieval drift on squad-rag: a collection holding one article, a baseline of questions about it,
then either more questions about the same article (no drift) or questions about another article
(drift), through the real embedder and the real Qdrant Edge store."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from rag.drift import (
    EMBEDDING,
    SCORE,
    DriftSettings,
    ScopeDrift,
    Windows,
    ks_statistic,
    ks_threshold,
    mean_shift,
    permutation_threshold,
)
from tests.rag.conftest import SQUAD_DOCS

HOME, AWAY = "Normans.txt", "Packet_switching.txt"
SETTINGS = DriftSettings()  # the server's defaults: 50 baseline, windows of 20-50


def questions_by_article() -> dict[str, list[str]]:
    by_doc: dict[str, list[str]] = {}
    with open(SQUAD_DOCS / "questions.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            by_doc.setdefault(row["doc"], []).append(row["question"])
    return by_doc


@pytest.fixture(scope="module")
def query_sets(shared_dir) -> dict[str, list[str]]:
    """The questions are listed paragraph by paragraph: shuffled, so the held-out half of the home
    article asks about the same paragraphs as the baseline (the same distribution)."""
    by_doc = questions_by_article()
    rng = random.Random(7)
    home, away = by_doc[HOME][:], by_doc[AWAY][:]
    rng.shuffle(home)
    rng.shuffle(away)
    baseline = home[:SETTINGS.baseline_size]
    return {"baseline": baseline, "same": home[len(baseline):], "away": away[:SETTINGS.window_size]}


@pytest.fixture(scope="module")
def retrievals(query_sets, embedder, tmp_path_factory):
    """(mode -> top scores, query embeddings) of every query set, from a collection of HOME only."""
    from rag import RagService

    service = RagService(tmp_path_factory.mktemp("drift") / "data", embedder=embedder)
    try:
        service.ingest_paths([SQUAD_DOCS / "docs" / HOME], "t1", "normans")
        out = {}
        for name, queries in query_sets.items():
            scores = {mode: [hits[0].score
                             for hits in service.retrieve_many("t1", "normans", queries, 5, mode)]
                      for mode in ("hybrid", "dense")}
            out[name] = (scores, embedder.embed(queries))
        return out
    finally:
        service.close()


def scope_after(retrievals, recent: str) -> ScopeDrift:
    scope = ScopeDrift(SETTINGS)
    for name in ("baseline", recent):
        scores, vectors = retrievals[name]
        for mode, values in scores.items():
            for value in values:
                scope.add_score(mode, value)
        scope.add_queries(vectors)
    return scope


def test_questions_about_the_same_article_do_not_drift(retrievals, query_sets):
    assert len(query_sets["same"]) >= SETTINGS.min_window
    reports = scope_after(retrievals, "same").reports()
    assert [(r.signal, r.mode) for r in reports] == [(SCORE, "dense"), (SCORE, "hybrid"), (EMBEDDING, None)]
    for report in reports:
        assert report.statistic is not None and not report.drifted, report


def test_questions_about_another_article_drift_on_every_signal(retrievals):
    scope = scope_after(retrievals, "away")
    reports = scope.reports()
    for report in reports:
        assert report.num_baseline == SETTINGS.baseline_size and report.num_recent == SETTINGS.window_size
        assert report.drifted, report
    assert scope.drifted


def test_no_verdict_before_the_recent_window_holds_min_window_queries(retrievals):
    base_scores, base_vectors = retrievals["baseline"]
    away_scores, away_vectors = retrievals["away"]
    scope = ScopeDrift(SETTINGS)
    for value in base_scores["dense"]:
        scope.add_score("dense", value)
    scope.add_queries(base_vectors)
    short = SETTINGS.min_window - 1
    for value in away_scores["dense"][:short]:
        scope.add_score("dense", value)
    scope.add_queries(away_vectors[:short])
    assert all(r.statistic is None and not r.drifted for r in scope.reports())
    scope.add_score("dense", away_scores["dense"][short])
    scope.add_queries(away_vectors[short:short + 1])
    assert all(r.drifted for r in scope.reports())


def test_ks_statistic_is_the_largest_gap_between_the_empirical_cdfs():
    # CDFs of [1, 2, 3] and [2.5, 4]: at 2 they are 2/3 and 0
    assert ks_statistic(np.array([1.0, 2.0, 3.0]), np.array([2.5, 4.0])) == pytest.approx(2 / 3)
    assert ks_statistic(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert ks_threshold(50, 50, 0.001) == pytest.approx(math.sqrt(-0.5 * math.log(0.0005)) * 0.2)


def test_the_permutation_threshold_separates_a_shifted_mean_and_is_reproducible():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(50, 16)), rng.normal(size=(30, 16))
    threshold = permutation_threshold(a, b, 0.001, 999, seed=0)
    assert threshold == permutation_threshold(a, b, 0.001, 999, seed=0)
    assert mean_shift(a, b) < threshold
    assert mean_shift(a, b + 1.0) > permutation_threshold(a, b + 1.0, 0.001, 999, seed=0)


def test_windows_keep_the_first_observations_and_slide_the_rest():
    windows = Windows(baseline_size=3, window_size=2)
    for i in range(7):
        windows.add(i)
    assert windows.baseline == [0, 1, 2] and list(windows.recent) == [5, 6]
    assert windows.can_compare(2) and not windows.can_compare(3)
