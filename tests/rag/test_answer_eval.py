"""`appliance eval answers`: scorer, split, oracle prompt, a tiny real run, and the CLI's bad input.

The end-to-end test uses the bundled model in-process and real Qdrant Edge on three questions of
one article, 8 new tokens each (the full evaluation is the command; numbers in docs/eval_answers.md).
"""

from __future__ import annotations

import pytest

from rag.answer_eval import (
    SPLITS,
    PromptConfig,
    evaluate_answers,
    load_doc_texts,
    oracle_prompt,
    select_split,
    split_of,
)
from rag.answer_score import contains_gold, normalize_answer
from rag.answer_stats import paired_summary
from rag.evaluation import load_questions
from rag.prompt import build_rag_prompt
from rag.types import Hit
from tests.rag.cli import appliance
from tests.rag.conftest import SQUAD_DOCS

NORMALISED = [
    ("The Normans.", "normans"),
    ("  A   cat\tand AN owl ", "cat and owl"),
    ("U.S. Army", "us army"),
    ("“Rollo”, Duke — of Normandy!", "rollo duke of normandy"),
    ("theory and thesis", "theory and thesis"),  # articles only as whole words
    ("1,000 $", "1000"),
]

CONTAINS = [
    ("Normandy is in France.", ("France",), True),
    ("the answer is THE 10th century", ("10th century",), True),
    ("It happened in 1984.", ("1",), False),  # whole words only
    ("Their business grew.", ("US",), False),
    ("It was the U.S. Navy", ("US Navy",), True),
    ("I do not know.", ("", "  "), False),  # empty golds never match
    ("Rollo, then William", ("Charles", "William"), True),
]


@pytest.mark.parametrize(("text", "expected"), NORMALISED)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(("answer", "golds", "expected"), CONTAINS)
def test_contains_gold(answer, golds, expected):
    assert contains_gold(answer, golds) is expected


def test_split_is_deterministic_disjoint_and_holds_out_enough():
    questions = load_questions(SQUAD_DOCS)
    tune, heldout = (select_split(questions, s) for s in SPLITS)
    assert {q.id for q in tune}.isdisjoint({q.id for q in heldout})
    assert len(tune) + len(heldout) == len(questions)
    assert len(heldout) >= 200
    assert [q.id for q in select_split(questions, "heldout")] == [q.id for q in heldout]
    assert all(split_of(q.id) == "heldout" for q in heldout)
    assert [q.id for q in select_split(questions, "tune", limit=5)] == [q.id for q in tune[:5]]
    with pytest.raises(ValueError, match="split"):
        select_split(questions, "train")


def test_oracle_prompt_holds_the_gold_paragraph_and_the_question():
    question = load_questions(SQUAD_DOCS, limit=1)[0]
    texts = load_doc_texts(SQUAD_DOCS, [question])
    paragraph = texts[question.doc][question.gold_start:question.gold_end]
    assert len(paragraph) > 100 and any(a in paragraph for a in question.answers)
    content = oracle_prompt("SYSTEM", question, texts[question.doc]).messages()[1]["content"]
    assert paragraph in content
    assert content.endswith(f"Question: {question.question}")
    assert content.count("[1]") == 1 and "[2]" not in content


def _hit(ident: str, source: str, index: int, score: float) -> Hit:
    return Hit(ident, source, source, index, f"text {ident}", score)


def test_relevance_order_puts_the_best_chunk_next_to_the_question():
    hits = [_hit("a", "z.txt", 0, 0.9), _hit("b", "a.txt", 3, 0.5), _hit("c", "m.txt", 1, 0.7)]
    relevance = build_rag_prompt("S", hits, "Q?", order="relevance").user_content()
    assert relevance.index("text b") < relevance.index("text c") < relevance.index("text a")
    default = build_rag_prompt("S", hits, "Q?").user_content()
    assert default == build_rag_prompt("S", hits, "Q?", order="canonical").user_content()
    assert default.index("text b") < default.index("text c") < default.index("text a")  # by source
    with pytest.raises(ValueError, match="order"):
        build_rag_prompt("S", hits, "Q?", order="score")


def test_paired_summary_interval_brackets_the_estimate():
    rag = [True] * 30 + [False] * 20
    oracle = [True] * 40 + [False] * 10
    s = paired_summary(rag, oracle)
    assert (s.n, s.rag, s.oracle) == (50, 0.6, 0.8)
    assert s.ratio == pytest.approx(0.75)
    assert s.ratio_low < s.ratio < s.ratio_high <= 1.0  # RAG never beats the oracle on these pairs
    assert s.diff == pytest.approx(-0.2)
    assert s.diff_low < s.diff < s.diff_high < 0
    same = paired_summary(oracle, oracle)
    assert (same.ratio, same.ratio_low, same.ratio_high, same.diff_low, same.diff_high) == (1, 1, 1, 0, 0)


def test_tiny_end_to_end_run_gives_scores_in_unit_interval(open_service):
    from appliance.commands.eval_answers import engine_generate
    from engine import EngineConfig, LLMEngine

    questions = [q for q in load_questions(SQUAD_DOCS) if q.doc == "Normans.txt"][:2]
    service = open_service()
    service.ingest_paths([SQUAD_DOCS / "docs" / "Normans.txt"], "eval", "squad")
    engine = LLMEngine(EngineConfig())
    configs = [PromptConfig("plain", "canonical", 1), PromptConfig("plain", "relevance", 2)]
    results = evaluate_answers(
        questions, load_doc_texts(SQUAD_DOCS, questions), configs, {"plain": "Answer briefly."},
        lambda qs, k: service.retrieve_many("eval", "squad", qs, k), engine_generate(engine, 8),
    )
    assert [r.config for r in results] == configs
    for result in results:
        s = result.summary
        assert s.n == 2 and len(result.rows) == 2
        assert all(0.0 <= v <= 1.0 for v in (s.rag, s.oracle, result.recall))
        assert -1.0 <= s.diff_low <= s.diff <= s.diff_high <= 1.0
        assert all(row["rag_answer"] and row["oracle_answer"] for row in result.rows)
        assert all(len(row["chunks"]) == result.config.k for row in result.rows)
    # the oracle answer depends only on the system prompt: one generation shared by both configs
    assert [r["oracle_answer"] for r in results[0].rows] == [r["oracle_answer"] for r in results[1].rows]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "-1"], "--limit must be >= 1"),
        (["--split", "train"], "--split must be one of tune, heldout"),
        (["--k", "2,x"], "--k takes comma-separated integers"),
        (["--order", "score"], "--order takes"),
        (["--system", "poetic"], "--system takes"),
    ],
)
def test_cli_bad_input_is_one_line_and_nonzero(args, message):
    result = appliance("eval", "answers", *args)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
