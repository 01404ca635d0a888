"""Paired scores with a 95% interval, so a RAG/oracle gap can be told apart from noise.

Each question yields two outcomes (RAG answer correct, oracle answer correct) on the same
question, so the interval comes from a paired bootstrap: resample questions with replacement and
recompute both the ratio and the difference of the two means. Resampling pairs keeps the strong
correlation between the two outcomes, which a two-sample interval would ignore (and be too wide).
The generator is seeded, so the same rows always give the same interval.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

RESAMPLES = 2000
SEED = 0


@dataclass(slots=True, frozen=True)
class PairedSummary:
    n: int
    rag: float  # share of questions whose RAG answer contains a gold answer
    oracle: float  # same, for the answer given the gold paragraph only
    ratio: float | None  # rag / oracle; None when the oracle never scores
    ratio_low: float | None
    ratio_high: float | None
    diff: float  # rag - oracle
    diff_low: float
    diff_high: float

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _percentile(sorted_values: list[float], share: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(share * (len(sorted_values) - 1))))
    return sorted_values[index]


def paired_summary(rag: list[bool], oracle: list[bool], resamples: int = RESAMPLES) -> PairedSummary:
    """Means, ratio and difference of paired 0/1 outcomes with paired-bootstrap 95% intervals."""
    if len(rag) != len(oracle):
        raise ValueError("rag and oracle outcomes must be paired (same length)")
    n = len(rag)
    if n == 0:
        return PairedSummary(0, 0.0, 0.0, None, None, None, 0.0, 0.0, 0.0)
    pairs = [(int(a), int(b)) for a, b in zip(rag, oracle, strict=True)]
    rng = random.Random(SEED)
    ratios: list[float] = []
    diffs: list[float] = []
    for _ in range(resamples):
        sample = rng.choices(pairs, k=n)
        sum_rag = sum(a for a, _ in sample)
        sum_oracle = sum(b for _, b in sample)
        diffs.append((sum_rag - sum_oracle) / n)
        ratio = _ratio(sum_rag, sum_oracle)
        if ratio is not None:
            ratios.append(ratio)
    ratios.sort()
    diffs.sort()
    total_rag, total_oracle = sum(a for a, _ in pairs), sum(b for _, b in pairs)
    return PairedSummary(
        n=n,
        rag=total_rag / n,
        oracle=total_oracle / n,
        ratio=_ratio(total_rag, total_oracle),
        ratio_low=_percentile(ratios, 0.025) if ratios else None,
        ratio_high=_percentile(ratios, 0.975) if ratios else None,
        diff=(total_rag - total_oracle) / n,
        diff_low=_percentile(diffs, 0.025),
        diff_high=_percentile(diffs, 0.975),
    )
