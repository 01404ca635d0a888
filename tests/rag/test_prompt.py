"""Prompt assembly: canonical chunk order and byte-identical prefixes, whatever the score order."""

from __future__ import annotations

import itertools

from rag import Hit, build_rag_prompt

SYSTEM = "Answer from the numbered context passages and cite them like [1]."


def _hit(doc: str, index: int, score: float, text: str | None = None) -> Hit:
    return Hit(
        id=f"{doc}-{index}",
        doc_id=f"id-{doc}",
        source=f"/data/{doc}.txt",
        chunk_index=index,
        text=text or f"Text of {doc} chunk {index}.",
        score=score,
    )


HITS = [_hit("zebra", 3, 0.9), _hit("apollo", 1, 0.8), _hit("zebra", 0, 0.7), _hit("apollo", 0, 0.2)]


def test_chunks_follow_canonical_order_not_scores():
    prompt = build_rag_prompt(SYSTEM, HITS, "Which one?")
    assert [(s["source"], s["chunk_index"]) for s in prompt.sources] == [
        ("/data/apollo.txt", 0),
        ("/data/apollo.txt", 1),
        ("/data/zebra.txt", 0),
        ("/data/zebra.txt", 3),
    ]
    assert [s["label"] for s in prompt.sources] == ["[1]", "[2]", "[3]", "[4]"]
    assert prompt.context.index("[1] apollo.txt\nText of apollo chunk 0.") < prompt.context.index(
        "[4] zebra.txt"
    )
    assert prompt.sources[3]["score"] == 0.9 and prompt.sources[3]["doc_id"] == "id-zebra"


def test_same_chunks_in_any_order_give_byte_identical_prompts():
    renderings = set()
    for permutation in itertools.permutations(HITS):
        rescored = [Hit(**{**h.to_dict(), "score": 1.0 / (i + 1)}) for i, h in enumerate(permutation)]
        messages = build_rag_prompt(SYSTEM, rescored, "Which one?").messages()
        renderings.add(repr(messages))
    assert len(renderings) == 1


def test_messages_put_system_first_and_question_last():
    prompt = build_rag_prompt(SYSTEM, HITS, "  Which one?  ")
    system, user = prompt.messages()
    assert system == {"role": "system", "content": SYSTEM}
    assert user["role"] == "user"
    assert user["content"].startswith("Context:\n[1] apollo.txt\n")
    assert user["content"].endswith("\n\nQuestion: Which one?")
    other_question = build_rag_prompt(SYSTEM, HITS, "Another question?").messages()[1]["content"]
    prefix = user["content"][: user["content"].index("Question:")]
    assert other_question.startswith(prefix)


def test_duplicate_hits_are_rendered_once_and_no_hits_means_no_context():
    prompt = build_rag_prompt(SYSTEM, [HITS[0], HITS[0]], "Q?")
    assert len(prompt.sources) == 1
    empty = build_rag_prompt(SYSTEM, [], "Q?")
    assert empty.context == "" and empty.sources == []
    assert empty.messages()[1]["content"] == "Question: Q?"
