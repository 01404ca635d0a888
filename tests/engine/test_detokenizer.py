"""Incremental detokenization: deltas join to the full text, never split a character."""

from __future__ import annotations

import pytest

from engine.detokenizer import IncrementalDetokenizer
from engine.loader import bundled_model_path
from engine.tokenizer import Tokenizer, _gguf_tokenizer

TEXTS = ["Hello world, how are you?", "naïve café — déjà vu", "東京タワーと🍕🍕 pizza",
         "  leading spaces\n\nand\tTabs",
         "emoji family 👨‍👩‍👧 end"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(_gguf_tokenizer(bundled_model_path()), [2])


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_join_to_full_text(tok, text):
    prompt = tok.encode("Prompt:")
    ids = tok.hf.encode(text, add_special_tokens=False)
    d = IncrementalDetokenizer(tok, prompt, stop=[])
    deltas = []
    for t in ids:
        d.add_token(t)
        deltas.append(d.take_delta(finished=False))
    d.flush()
    deltas.append(d.take_delta(finished=True))
    assert "".join(deltas) == tok.decode(ids)
    assert all("\ufffd" not in x for x in deltas)


def test_stop_string_across_tokens_is_held_back(tok):
    ids = tok.hf.encode("alpha beta gamma delta", add_special_tokens=False)
    d = IncrementalDetokenizer(tok, [], stop=["gamma"])
    emitted = ""
    for t in ids:
        d.add_token(t)
        if d.find_stop():
            emitted += d.take_delta(finished=True)
            break
        emitted += d.take_delta(finished=False)
    assert emitted == "alpha beta "
