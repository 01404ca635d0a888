"""Per-answer quality signals on squad-rag, where the right answer is known.

SQuAD answers are spans of their gold paragraph, so an answer made of the accepted answer must be
fully grounded in that paragraph; the same answer scored against a paragraph of another article
must not be. No model is involved: the scores are string work (see rag/quality.py).
"""

from __future__ import annotations

import json
import random
import re

import pytest

from rag.quality import answer_quality, citations, content_words, is_idk
from tests.rag.conftest import SQUAD_DOCS

NUM_SAMPLED = 300


def squad_rows() -> list[dict]:
    with open(SQUAD_DOCS / "questions.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def sampled(shared_dir) -> list[tuple[str, str, str]]:
    """(answer sentence, gold paragraph, a paragraph of another article) for sampled questions whose
    answer has content words and stands in the paragraph as whole words (groundedness compares
    words: the answer "Japan" inside "Japanese" is not there)."""
    rows = squad_rows()
    rng = random.Random(13)
    picked = []
    for row in rng.sample(rows, NUM_SAMPLED):
        span = row["answers"][0]
        answer = f"The answer is {span} [1]."
        if not content_words(answer) or not re.search(rf"(?<!\w){re.escape(span)}(?!\w)", row["context"]):
            continue
        other = rng.choice([r for r in rows if r["doc"] != row["doc"]])
        picked.append((answer, row["context"], other["context"]))
    assert len(picked) > NUM_SAMPLED * 0.8
    return picked


def test_an_answer_taken_from_its_gold_paragraph_is_fully_grounded(sampled):
    for answer, gold, _ in sampled:
        quality = answer_quality(answer, [gold])
        assert quality.groundedness == 1.0, (answer, gold)
        assert quality.cited == (1,) and quality.citations_valid
        assert not quality.is_idk, answer


def test_the_same_answers_against_another_articles_paragraph_are_mostly_ungrounded(sampled):
    scores = [answer_quality(answer, [other]).groundedness for answer, _, other in sampled]
    mean = sum(scores) / len(scores)
    assert mean < 0.35, mean
    assert sum(1 for s in scores if s == 1.0) < len(scores) * 0.2


def test_groundedness_is_the_share_of_content_words_found_in_the_sources():
    sources = ["The Apollo 11 mission landed the lunar module Eagle on the Moon on 20 July 1969.",
               "Neil Armstrong and Buzz Aldrin walked on the surface."]
    half = answer_quality("Armstrong landed on the Moon with NASA engineers in Houston.", sources)
    # content words: armstrong land moon nasa engineer houston -> 3 of 6 in the sources
    assert half.num_content_words == 6 and half.groundedness == 0.5
    assert answer_quality("The lunar module landed [2].", sources).groundedness == 1.0
    assert answer_quality("It was so.", sources).groundedness is None  # no content words


def test_citations_are_valid_only_when_a_source_has_the_label():
    sources = ["first", "second"]
    assert citations("see [1], [2] and [1, 2]; also [3-5] and [7;8]") == (1, 2, 3, 4, 5, 7, 8)
    assert citations("a year in brackets [2010] is not a label; nor is [a]") == ()
    assert answer_quality("Both [1][2].", sources).citations_valid
    bad = answer_quality("Both [1] and [3].", sources)
    assert bad.cited == (1, 3) and bad.invalid_citations == (3,) and not bad.citations_valid
    none = answer_quality("No labels at all.", sources)
    assert not none.has_citations and none.citations_valid
    assert answer_quality("Zero [0].", sources).invalid_citations == (0,)


@pytest.mark.parametrize("answer", [
    "I don't know.",
    "I do not know the answer to that.",
    "The context does not mention when the treaty was signed.",
    "The passages don't say who built it.",
    "This is not mentioned in the context.",
    "There is no information about the author in the sources.",
    "I cannot answer this question from the given passages.",
    "Based on the context, I'm unable to determine the year.",
])
def test_abstentions_are_flagged_and_not_scored(answer):
    quality = answer_quality(answer, ["The Normans gave their name to Normandy, a region in France."])
    assert quality.is_idk
    assert quality.groundedness is None


def test_squad_answers_are_not_abstentions(shared_dir):
    sentences = [f"{row['answers'][0]} [1]." for row in squad_rows()]
    flagged = [s for s in sentences if is_idk(s)]
    assert flagged == []
