"""Does a generated answer contain a gold answer? SQuAD-style normalisation, then a word match.

Normalising both sides (lowercase, punctuation removed, articles dropped, whitespace collapsed)
keeps formatting from deciding the score: "The Normans." contains "normans". The match is on word
boundaries, so the gold "1" is not found inside "1984" nor "us" inside "business".
"""

from __future__ import annotations

import re
import unicodedata

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P") or char in "$+<=>^`|~"


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation (deleted, as SQuAD does: "U.S." -> "us"), drop articles, squash spaces."""
    lowered = text.lower()
    no_punct = "".join(c for c in lowered if not _is_punctuation(c))
    return " ".join(_ARTICLES.sub(" ", no_punct).split())


def contains_gold(answer: str, golds: tuple[str, ...] | list[str]) -> bool:
    """True when any accepted answer, normalised, occurs as whole words in the normalised answer."""
    padded = f" {normalize_answer(answer)} "
    for gold in golds:
        needle = normalize_answer(gold)
        if needle and f" {needle} " in padded:
            return True
    return False
