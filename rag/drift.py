"""Drift of one collection's retrieval traffic: do the recent questions and hits look like the baseline's?

Each (tenant, collection) keeps a baseline window (its first `baseline_size` retrievals) and a recent
window (the latest `window_size` after those), and compares them with a two-sample test per signal:

- top_score: the score of each retrieval's best hit, by the Kolmogorov-Smirnov statistic D (the
  largest gap between the two empirical CDFs). Questions the collection cannot answer well pull the
  best score down. Why KS rather than PSI: the score's scale depends on the search mode (cosine in
  dense mode, reciprocal-rank fusion in hybrid), and KS needs neither bins nor a scale; its
  threshold follows from the window sizes, D > c(alpha) * sqrt((n + m) / (n * m)), where PSI's usual
  0.1 / 0.25 cut-offs ignore sample size (with windows of a few dozen queries, ten-bin PSI noise
  alone often passes 0.1). Scores of different modes are never mixed: each mode has its windows.
  Tied scores (fusion scores are rank-based) make the test conservative, never trigger-happy.
- query_embedding: where the questions lie in embedding space, by the squared distance between the
  windows' mean embeddings, i.e. the linear-kernel MMD^2 (for unit vectors it moves with the cosine
  shift of the mean question). A new topic moves the mean, and the number reads as "the average
  question moved"; an RBF-kernel MMD would also catch changes of spread, at the price of a
  bandwidth to choose. Threshold: a permutation test: the statistic must exceed all but
  floor(alpha * (P + 1)) - 1 of P random relabelings of the pooled queries (p <= alpha). The
  relabelings come from a fixed seed, so the same windows always give the same verdict.

alpha is small (0.001) because the test is repeated as the recent window slides: a looser level
would raise false alarms on a steady stream. Everything here is plain numpy on small windows (the
permutation test, the costly part, is about 10^7 multiply-adds for windows of 50), and a scope's
reports are computed again only after new observations.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

SCORE, EMBEDDING = "top_score", "query_embedding"


@dataclass(slots=True, frozen=True)
class DriftSettings:
    baseline_size: int = 50
    window_size: int = 50
    min_window: int = 20  # recent observations needed before a verdict
    alpha: float = 0.001
    num_permutations: int = 999
    seed: int = 0


@dataclass(slots=True, frozen=True)
class DriftReport:
    signal: str  # SCORE or EMBEDDING
    mode: str | None  # the search mode of a SCORE report
    statistic: float | None  # None while a window is still filling
    threshold: float | None
    num_baseline: int
    num_recent: int

    @property
    def drifted(self) -> bool:
        return self.statistic is not None and self.threshold is not None and self.statistic > self.threshold

    def to_dict(self) -> dict:
        return {"signal": self.signal, "mode": self.mode, "statistic": self.statistic,
                "threshold": self.threshold, "drifted": self.drifted, "num_baseline": self.num_baseline,
                "num_recent": self.num_recent}


@dataclass(slots=True)
class Windows:
    """The first `baseline_size` observations, then a sliding window of the latest `window_size`."""

    baseline_size: int
    window_size: int
    baseline: list = field(default_factory=list)
    recent: deque = field(init=False)

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.window_size)

    def add(self, item) -> None:
        if len(self.baseline) < self.baseline_size:
            self.baseline.append(item)
        else:
            self.recent.append(item)

    def can_compare(self, min_window: int) -> bool:
        return len(self.baseline) == self.baseline_size and len(self.recent) >= min_window

    def copy(self) -> Windows:
        windows = Windows(self.baseline_size, self.window_size, list(self.baseline))
        windows.recent.extend(self.recent)
        return windows


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D: the largest gap between the empirical CDFs of a and b."""
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def ks_threshold(n: int, m: int, alpha: float) -> float:
    """The asymptotic critical value of D at level alpha for samples of n and m."""
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n + m) / (n * m))


def mean_shift(a: np.ndarray, b: np.ndarray) -> float:
    """Squared distance between the mean rows of a and b (linear-kernel MMD^2)."""
    delta = a.mean(axis=0) - b.mean(axis=0)
    return float(delta @ delta)


def permutation_threshold(a: np.ndarray, b: np.ndarray, alpha: float, num_permutations: int,
                          seed: int) -> float:
    """The mean shift that a relabeling of the pooled rows reaches with probability about alpha:
    a shift above it has a permutation p-value <= alpha."""
    pooled = np.concatenate([a, b]).astype(np.float64)
    gram = pooled @ pooled.T  # each relabeling's shift is w' G w for its weights w: no pass over d
    n, total = len(a), len(pooled)
    ranks = np.argsort(np.random.default_rng(seed).random((num_permutations, total)), axis=1)
    weights = np.where(ranks < n, 1.0 / n, -1.0 / (total - n))  # rows: random relabelings, n of them "a"
    null = np.sort(np.sum((weights @ gram) * weights, axis=1))
    rank = max(1, math.floor(alpha * (num_permutations + 1)))
    return float(null[-rank])


class ScopeDrift:
    """The windows of one (tenant, collection). Not thread-safe, with one exception that lets the
    costly query-embedding report be computed without the caller's lock: `with_queries` only reads
    `queries`, and `set_queries` (under the lock) is the only writer of it."""

    def __init__(self, settings: DriftSettings | None = None) -> None:
        self.settings = settings or DriftSettings()
        self.scores: dict[str, Windows] = {}  # search mode -> windows of top scores
        self.queries = Windows(self.settings.baseline_size, self.settings.window_size)
        self._reports: dict[tuple[str, str | None], DriftReport] = {}  # valid until the next change

    def add_score(self, mode: str, score: float) -> None:
        if mode not in self.scores:
            self.scores[mode] = Windows(self.settings.baseline_size, self.settings.window_size)
        self.scores[mode].add(float(score))
        self._reports.pop((SCORE, mode), None)

    def with_queries(self, vectors: np.ndarray) -> tuple[Windows, DriftReport]:
        """The query windows after adding `vectors`, and their report; changes nothing."""
        windows = self.queries.copy()
        for vector in np.asarray(vectors, dtype=np.float32):
            windows.add(vector)
        return windows, evaluate(EMBEDDING, None, windows, self.settings)

    def set_queries(self, windows: Windows, report: DriftReport) -> None:
        self.queries = windows
        self._reports[(EMBEDDING, None)] = report

    def add_queries(self, vectors: np.ndarray) -> None:
        self.set_queries(*self.with_queries(vectors))

    def reports(self) -> list[DriftReport]:
        """One SCORE report per search mode seen, then the EMBEDDING report."""
        keys = [(SCORE, mode) for mode in sorted(self.scores)] + [(EMBEDDING, None)]
        for signal, mode in keys:
            if (signal, mode) not in self._reports:
                windows = self.scores[mode] if signal == SCORE else self.queries
                self._reports[(signal, mode)] = evaluate(signal, mode, windows, self.settings)
        return [self._reports[key] for key in keys]

    @property
    def drifted(self) -> bool:
        return any(report.drifted for report in self.reports())


def evaluate(signal: str, mode: str | None, windows: Windows, s: DriftSettings) -> DriftReport:
    """The report of one signal's windows: no verdict until they can be compared."""
    num_baseline, num_recent = len(windows.baseline), len(windows.recent)
    if not windows.can_compare(s.min_window):
        return DriftReport(signal, mode, None, None, num_baseline, num_recent)
    a, b = np.asarray(windows.baseline), np.asarray(windows.recent)
    if signal == SCORE:
        statistic, threshold = ks_statistic(a, b), ks_threshold(len(a), len(b), s.alpha)
    else:
        statistic = mean_shift(a, b)
        threshold = permutation_threshold(a, b, s.alpha, s.num_permutations, s.seed)
    return DriftReport(signal, mode, statistic, threshold, num_baseline, num_recent)
