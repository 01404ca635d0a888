"""Typed view of the "quality" object of /admin/stats: answer quality, drift and injection per scope.

The server reports three lists keyed by (tenant, collection) (see appliance/server/quality_stats.py
and docs/api.md); the dashboard shows one row per scope, so they are joined here. A document without
the object, or with a field of the wrong type, raises ValueError naming what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class DriftSignal:
    signal: str  # "top_score" or "query_embedding"
    mode: str | None
    statistic: float | None  # None while the baseline or the recent window fills
    threshold: float | None
    drifted: bool
    num_baseline: int
    num_recent: int

    @property
    def ratio(self) -> float | None:
        """The statistic as a multiple of its threshold (above 1: drifted)."""
        if self.statistic is None or not self.threshold:
            return None
        return self.statistic / self.threshold


@dataclass(slots=True)
class ScopeQuality:
    tenant: str
    collection: str
    num_answers: int = 0
    groundedness_mean: float | None = None
    num_idk: int = 0
    num_cited: int = 0
    num_invalid_citations: int = 0
    signals: list[DriftSignal] = field(default_factory=list)
    num_chunks: int = 0
    num_flagged: int = 0
    markers: dict[str, int] = field(default_factory=dict)
    recent_flags: list[dict] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.tenant}/{self.collection}"

    @property
    def drifted(self) -> bool:
        return any(s.drifted for s in self.signals)


@dataclass(slots=True, frozen=True)
class QualityReport:
    num_answers: int
    groundedness_mean: float | None
    num_idk: int
    num_invalid_citations: int
    baseline_size: int
    min_window: int
    scopes: list[ScopeQuality]

    @property
    def num_drifted(self) -> int:
        return sum(1 for s in self.scopes if s.drifted)

    @property
    def num_flagged(self) -> int:
        return sum(s.num_flagged for s in self.scopes)


def _number(row: dict, key: str, optional: bool = False) -> float | None:
    value = row.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"quality field '{key}' is {value!r}, not a number")
    return value


def _list(doc: dict, key: str) -> list[dict]:
    value = doc.get(key)
    if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
        raise ValueError(f"the quality object has no '{key}' list")
    return value


def parse_quality(stats: object) -> QualityReport:
    """Read the "quality" object of one /admin/stats document."""
    quality = stats.get("quality") if isinstance(stats, dict) else None
    if not isinstance(quality, dict) or not isinstance(quality.get("answers"), dict):
        raise ValueError("the stats have no 'quality' object (an appliance older than the quality panel?)")
    answers, settings = quality["answers"], quality.get("drift_settings") or {}
    scopes: dict[tuple[str, str], ScopeQuality] = {}

    def scope(row: dict) -> ScopeQuality:
        key = (str(row["tenant"]), str(row["collection"]))
        return scopes.setdefault(key, ScopeQuality(*key))

    try:
        for row in _list(answers, "scopes"):
            _add_answers(scope(row), row)
        for row in _list(quality, "drift"):
            scope(row).signals.append(_signal(row))
        for row in _list(quality, "injection"):
            _add_injection(scope(row), row)
    except KeyError as exc:
        raise ValueError(f"a quality row lacks the field {exc.args[0]!r}") from None
    return QualityReport(int(_number(answers, "num_answers")), _number(answers, "groundedness_mean", True),
                         int(_number(answers, "num_idk")), int(_number(answers, "num_invalid_citations")),
                         int(settings.get("baseline_size") or 0), int(settings.get("min_window") or 0),
                         [scopes[key] for key in sorted(scopes)])


def _add_answers(s: ScopeQuality, row: dict) -> None:
    s.num_answers = int(_number(row, "num_answers"))
    s.groundedness_mean = _number(row, "groundedness_mean", True)
    s.num_idk = int(_number(row, "num_idk"))
    s.num_cited = int(_number(row, "num_cited"))
    s.num_invalid_citations = int(_number(row, "num_invalid_citations"))


def _signal(row: dict) -> DriftSignal:
    return DriftSignal(str(row["signal"]), row.get("mode"), _number(row, "statistic", True),
                       _number(row, "threshold", True), bool(row["drifted"]),
                       int(_number(row, "num_baseline")), int(_number(row, "num_recent")))


def _add_injection(s: ScopeQuality, row: dict) -> None:
    s.num_chunks = int(_number(row, "num_chunks"))
    s.num_flagged = int(_number(row, "num_flagged"))
    s.markers = {str(k): int(v) for k, v in (row.get("markers") or {}).items()}
    s.recent_flags = [dict(flag) for flag in row.get("recent") or [] if isinstance(flag, dict)]
