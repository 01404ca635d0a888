"""Retrieval recall on a SQuAD-style set (the squad-rag data under ../shared/data).

A retrieved chunk is a hit for a question when it comes from the gold document, overlaps the gold
paragraph's characters and contains one of the accepted answers. recall@k is the share of
questions with a hit among the first k results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from rag.loaders import load_document, normalize_text
from rag.types import Hit

KS = (1, 5, 10)


@dataclass(slots=True, frozen=True)
class Question:
    id: str
    question: str
    answers: tuple[str, ...]
    doc: str
    gold_start: int  # char span of the gold paragraph in the loaded (normalised) document text
    gold_end: int


@dataclass(slots=True)
class RecallReport:
    mode: str
    num_questions: int
    hits_at: dict[int, int] = field(default_factory=dict)

    def recall(self, k: int) -> float:
        return self.hits_at.get(k, 0) / self.num_questions if self.num_questions else 0.0

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "questions": self.num_questions,
            **{f"recall@{k}": self.recall(k) for k in KS},
        }


def default_dataset_dir(repo_root: Path) -> Path:
    return repo_root.parent / "shared" / "data" / "squad-rag"


def load_questions(dataset: Path, limit: int | None = None) -> list[Question]:
    """Questions with their gold span located in the text exactly as the loader normalises it."""
    texts: dict[str, str] = {}
    questions: list[Question] = []
    with open(dataset / "questions.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["doc"] not in texts:
                path = dataset / "docs" / row["doc"]
                texts[row["doc"]] = load_document(path.name, path.read_bytes()).text
            context = normalize_text(row["context"])
            start = texts[row["doc"]].find(context)
            if start < 0:
                raise ValueError(f"gold paragraph of question {row['id']} not found in {row['doc']}")
            answers = tuple(a for a in row["answers"] if a.strip())
            questions.append(
                Question(row["id"], row["question"], answers, row["doc"], start, start + len(context))
            )
            if limit is not None and len(questions) >= limit:
                break
    return questions


def is_hit(question: Question, hit: Hit) -> bool:
    if PurePosixPath(hit.source).name != question.doc:
        return False
    if hit.char_end <= question.gold_start or hit.char_start >= question.gold_end:
        return False
    return any(answer in hit.text for answer in question.answers)


def first_hit_rank(question: Question, hits: list[Hit]) -> int | None:
    for rank, hit in enumerate(hits, start=1):
        if is_hit(question, hit):
            return rank
    return None


def evaluate(retrieve_many, questions: list[Question], mode: str) -> RecallReport:
    """`retrieve_many(queries, top_k, mode) -> list[list[Hit]]`; asks for max(KS) results per question."""
    report = RecallReport(mode=mode, num_questions=len(questions))
    results = retrieve_many([q.question for q in questions], max(KS), mode)
    for question, hits in zip(questions, results, strict=True):
        rank = first_hit_rank(question, hits)
        for k in KS:
            if rank is not None and rank <= k:
                report.hits_at[k] = report.hits_at.get(k, 0) + 1
    return report
