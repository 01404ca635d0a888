"""Per-answer quality signals, from the answer's text and the retrieved sources alone.

No second model call: it is string work over text the request already holds, about a millisecond
for a typical answer over five chunks, so every answer gets scored.

- groundedness: the share of the answer's content words that occur in the retrieved sources.
  Content words are the answer's lowercased letter/digit runs minus English function words, the
  words answers use to talk about their sources ("according", "context", "passage") and citation
  labels; both sides are folded the same crude way (-s, -es, -ed, -ing dropped) so "landed" meets
  "land". It measures lexical support: whether the words the answer asserts were in front of the
  model. It does not judge truth: a faithful paraphrase in new words scores low and a wrong
  recombination of source words scores high. Watch it as a distribution (an answer mix that slides
  towards the model's own memory), not as a verdict on one answer. Undefined (None) for an
  abstention and for an answer without content words.
- citations: every [n] label in the answer ([1], [1, 3], [2-4]); valid when 1 <= n <= the number of
  sources the prompt numbered.
- "I don't know": the answer declines, in one of the usual ways of saying that the sources do not
  hold the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_STOP_WORDS = """
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each either else ever few for from further
had has have having he her here hers herself him himself his how however i if in into is it its itself
just let me more most much must my myself neither no nor not now of off on once only or other ought our
ours ourselves out over own same shall she should so some such than that the their theirs them
themselves then there these they this those through thus to too under until up upon very was we were
what when where which while who whom whose why will with would yet you your yours yourself yourselves
d don doesn didn isn aren wasn weren won ll m re s t ve
"""
_META_WORDS = ("according answer based context document documents given mentioned passage passages provided "
               "source sources stated text")
STOP_WORDS = frozenset(_STOP_WORDS.split())
META_WORDS = frozenset(_META_WORDS.split())  # how answers talk about their sources
FOLD_SUFFIXES = ("ing", "ed", "es", "s")
MIN_STEM = 3
MAX_CITATION_SPAN = 50  # a range like [1-9999] counts its two ends only
WORD = re.compile(r"[^\W_]+")
CITATION = re.compile(r"\[(\d{1,3}(?:\s*[,;\u2013-]\s*\d{1,3})*)\]")
IDK = re.compile(
    r"\bI\s+(?:do\s+not|don't|dont|cannot|can't|can\s+not)\s+know\b|"
    r"\b(?:cannot|can't|can\s+not|unable\s+to|not\s+able\s+to)\s+(?:\w+\s+){0,2}?"
    r"(?:answer|determine|find|tell|say|know)\b|"
    r"\b(?:context|passages?|sources?|documents?|text|information)\s+(?:\w+\s+){0,3}?"
    r"(?:does\s+not|doesn't|do\s+not|don't|did\s+not)\s+(?:\w+\s+){0,2}?"
    r"(?:contain|mention|say|provide|include|specify|state|give|answer|tell|cover)\b|"
    r"\bnot\s+(?:\w+\s+){0,2}?(?:mentioned|stated|provided|given|found|specified|covered|included)\s+"
    r"in\s+the\s+(?:context|passages?|sources?|documents?|text)\b|"
    r"\b(?:no|not\s+enough)\s+(?:relevant\s+)?information\b",
    re.IGNORECASE,
)


@dataclass(slots=True, frozen=True)
class AnswerQuality:
    groundedness: float | None  # share of content words found in the sources; None: see above
    num_content_words: int
    cited: tuple[int, ...]  # the distinct labels the answer cites, ascending
    invalid_citations: tuple[int, ...]  # cited labels with no such source
    is_idk: bool  # the answer says the sources do not hold the answer

    @property
    def has_citations(self) -> bool:
        return bool(self.cited)

    @property
    def citations_valid(self) -> bool:
        return not self.invalid_citations

    def to_dict(self) -> dict:
        return {"groundedness": self.groundedness, "num_content_words": self.num_content_words,
                "cited": list(self.cited), "invalid_citations": list(self.invalid_citations),
                "citations_valid": self.citations_valid, "is_idk": self.is_idk}


def fold(word: str) -> str:
    for suffix in FOLD_SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= MIN_STEM:
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> list[str]:
    """The folded content words of `text`, in order (repeats kept); citation labels are not words."""
    words = (w.lower() for w in WORD.findall(CITATION.sub(" ", text)))
    return [fold(w) for w in words if w not in STOP_WORDS and w not in META_WORDS]


def share_in_sources(words: list[str], sources: list[str]) -> float | None:
    """The share of `words` (content words, folded) that occur in the sources; None for no words."""
    if not words:
        return None
    vocabulary = {fold(w) for w in set(WORD.findall(" ".join(sources).lower()))}
    return sum(1 for w in words if w in vocabulary) / len(words)


def citations(answer: str) -> tuple[int, ...]:
    cited: set[int] = set()
    for group in CITATION.findall(answer):
        for part in re.split(r"\s*[,;]\s*", group):
            ends = [int(n) for n in re.split(r"\s*[\u2013-]\s*", part)]
            low, high = min(ends), max(ends)
            cited.update(range(low, high + 1) if high - low <= MAX_CITATION_SPAN else (low, high))
    return tuple(sorted(cited))


def is_idk(answer: str) -> bool:
    return IDK.search(answer) is not None


def answer_quality(answer: str, sources: list[str]) -> AnswerQuality:
    """Score one answer against the texts of the sources its prompt numbered [1]..[len(sources)]."""
    idk = is_idk(answer)
    words = content_words(answer)
    cited = citations(answer)
    return AnswerQuality(
        groundedness=None if idk else share_in_sources(words, sources),
        num_content_words=len(words),
        cited=cited,
        invalid_citations=tuple(n for n in cited if not 1 <= n <= len(sources)),
        is_idk=idk,
    )
