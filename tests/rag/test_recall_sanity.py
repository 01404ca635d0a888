"""A small recall check on two squad-rag articles with the shipped settings (the full evaluation
is `appliance eval retrieval`; numbers in docs/benchmarks.md)."""

from __future__ import annotations

from rag.evaluation import evaluate, first_hit_rank, load_questions
from tests.rag.conftest import SQUAD_DOCS

ARTICLES = ("Normans.txt", "Packet_switching.txt")


def test_hybrid_recall_at_5_on_two_articles(open_service, shared_dir):
    assert SQUAD_DOCS.is_dir()
    questions = [q for q in load_questions(SQUAD_DOCS) if q.doc in ARTICLES]
    assert len(questions) == 200
    service = open_service()
    service.ingest_paths([SQUAD_DOCS / "docs" / name for name in ARTICLES], "eval", "squad")
    report = evaluate(
        lambda qs, k, mode: service.retrieve_many("eval", "squad", qs, k, mode), questions, "hybrid"
    )
    assert report.recall(5) >= 0.92, report.to_dict()
    assert report.recall(1) <= report.recall(5) <= report.recall(10)


def test_a_hit_must_hold_the_answer_inside_the_gold_paragraph(open_service):
    questions = load_questions(SQUAD_DOCS, limit=1)
    question = questions[0]
    service = open_service()
    service.ingest_paths([SQUAD_DOCS / "docs" / question.doc], "eval", "squad")
    hits = service.retrieve("eval", "squad", question.question, top_k=10)
    assert first_hit_rank(question, hits) is not None
    outside = [h for h in hits if h.char_end <= question.gold_start or h.char_start >= question.gold_end]
    assert all(first_hit_rank(question, [h]) is None for h in outside)
