"""The chunker with the embedder's real tokenizer: exact slices, token bounds, structure, overlap."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.chunker import Chunker, ChunkerConfig, TokenSpans
from rag.embedder import bundled_model_path


@pytest.fixture(scope="module")
def spans() -> TokenSpans:
    from transformers import AutoTokenizer

    return TokenSpans(AutoTokenizer.from_pretrained(str(bundled_model_path())))


def _chunks(spans, text, max_tokens=40, overlap=0, title=""):
    return Chunker(spans, ChunkerConfig(max_tokens, overlap)).chunk(text, "doc", "src", title)


def _sentence(i: int) -> str:
    return f"Sentence number {i} talks about harbour tides and gulls."


def _check_invariants(spans, text, chunks, max_tokens):
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text == text[chunk.char_start : chunk.char_end]
        assert chunk.text == chunk.text.strip() and chunk.text
        assert len(spans(chunk.text)) <= max_tokens
    assert [c.char_start for c in chunks] == sorted(c.char_start for c in chunks)
    covered = set()
    for chunk in chunks:
        covered.update(range(chunk.char_start, chunk.char_end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


def test_short_paragraphs_are_packed_whole(spans):
    paragraphs = ["Alpha beta gamma.", "Delta epsilon zeta.", "Eta theta iota.", "Kappa lambda mu."]
    text = "\n\n".join(paragraphs)
    chunks = _chunks(spans, text, max_tokens=12)
    _check_invariants(spans, text, chunks, 12)
    for paragraph in paragraphs:
        assert sum(paragraph in c.text for c in chunks) == 1  # whole, in exactly one chunk


def test_a_paragraph_that_would_not_fit_starts_a_new_chunk(spans):
    first = " ".join(_sentence(i) for i in range(2))
    second = " ".join(_sentence(i) for i in range(2, 4))
    chunks = _chunks(spans, f"{first}\n\n{second}", max_tokens=40)
    assert [c.text for c in chunks] == [first, second]


def test_long_paragraph_splits_at_sentence_ends(spans):
    text = " ".join(_sentence(i) for i in range(20))
    chunks = _chunks(spans, text, max_tokens=40)
    _check_invariants(spans, text, chunks, 40)
    assert len(chunks) > 1 and all(c.text.endswith(".") for c in chunks)


def test_overlap_repeats_trailing_sentences(spans):
    text = " ".join(_sentence(i) for i in range(20))
    chunks = _chunks(spans, text, max_tokens=48, overlap=16)
    _check_invariants(spans, text, chunks, 48)
    assert all(nxt.char_start < prev.char_end for prev, nxt in itertools.pairwise(chunks))
    no_overlap = _chunks(spans, text, max_tokens=48)
    assert all(nxt.char_start > prev.char_end for prev, nxt in itertools.pairwise(no_overlap))


def test_giant_sentence_is_cut_at_token_boundaries(spans):
    text = "word " * 500 + "end"
    chunks = _chunks(spans, text.strip(), max_tokens=64)
    _check_invariants(spans, text.strip(), chunks, 64)
    assert len(chunks) == 8


def test_headings_open_chunks_and_label_them(spans):
    text = (
        "# Guide\n\nIntro.\n\n## Install\n\nRun the installer.\n\n"
        "```\n# not a heading\n```\n\n## Use\n\nClick."
    )
    chunks = _chunks(spans, text, max_tokens=100)
    assert [c.text.splitlines()[0] for c in chunks] == ["# Guide", "## Install", "## Use"]
    assert [c.heading for c in chunks] == ["Guide", "Guide > Install", "Guide > Use"]
    assert "# not a heading" in chunks[1].text


def test_plain_text_title_line_is_a_heading(spans):
    text = "Normans\n\n" + " ".join(_sentence(i) for i in range(3))
    chunks = _chunks(spans, text, max_tokens=30, title="Normans")
    assert chunks[0].text.startswith("Normans\n\nSentence number 0")  # the title stays with its text
    assert all(c.heading == "Normans" for c in chunks)


def test_chunking_is_deterministic(spans):
    text = "\n\n".join(" ".join(_sentence(i + j) for i in range(j % 5 + 1)) for j in range(30))
    assert _chunks(spans, text, 50, 10) == _chunks(spans, text, 50, 10)


def test_bad_config_is_refused(spans):
    with pytest.raises(ValueError):
        Chunker(spans, ChunkerConfig(max_tokens=4))
    with pytest.raises(ValueError):
        Chunker(spans, ChunkerConfig(max_tokens=64, overlap_tokens=40))


_words = st.sampled_from(
    ["tide", "gull", "harbour", "Über", "naïve", "3.14", "e.g.", "end.", "why?", "#", "(x)"]
)
_line = st.lists(_words, min_size=1, max_size=30).map(" ".join)
_paragraph = st.lists(_line, min_size=1, max_size=4).map("\n".join)
_document = st.lists(_paragraph, min_size=1, max_size=12).map("\n\n".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_document, max_tokens=st.integers(8, 80), overlap=st.integers(0, 3))
def test_invariants_hold_for_any_document(spans, text, max_tokens, overlap):
    chunks = _chunks(spans, text, max_tokens, min(overlap, max_tokens // 2 - 1))
    _check_invariants(spans, text, chunks, max_tokens)
