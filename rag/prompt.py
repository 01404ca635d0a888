"""Prompt assembly for retrieval-augmented answers, laid out for the engine's prefix cache.

Order: system prompt, then the retrieved chunks, then the question. The chunks are sorted
canonically (by source, doc_id, chunk_index — never by score) and each is rendered by one fixed
template, so whenever the same chunks come back, in whatever score order, the prompt bytes up to
the question are identical and the engine can reuse their KV blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from rag.types import Hit

CONTEXT_HEADER = "Context:\n"
QUESTION_HEADER = "Question: "


@dataclass(slots=True, frozen=True)
class RagPrompt:
    system: str
    context: str
    question: str
    sources: list[dict]

    def user_content(self) -> str:
        if not self.context:
            return f"{QUESTION_HEADER}{self.question}"
        return f"{self.context}\n\n{QUESTION_HEADER}{self.question}"

    def messages(self) -> list[dict]:
        """System + user messages for a chat template; the question is the very last thing."""
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user_content()},
        ]


def canonical_order(hits: list[Hit]) -> list[Hit]:
    unique = {hit.id: hit for hit in hits}
    return sorted(unique.values(), key=lambda h: (h.source, h.doc_id, h.chunk_index))


def render_chunk(label: int, hit: Hit) -> str:
    name = PurePosixPath(hit.source.replace("\\", "/")).name or hit.source
    return f"[{label}] {name}\n{hit.text.strip()}"


def build_rag_prompt(system_prompt: str, hits: list[Hit], question: str) -> RagPrompt:
    ordered = canonical_order(hits)
    blocks = [render_chunk(label, hit) for label, hit in enumerate(ordered, start=1)]
    context = CONTEXT_HEADER + "\n\n".join(blocks) if blocks else ""
    sources = [
        {
            "label": f"[{label}]",
            "doc_id": hit.doc_id,
            "source": hit.source,
            "chunk_index": hit.chunk_index,
            "score": hit.score,
        }
        for label, hit in enumerate(ordered, start=1)
    ]
    return RagPrompt(system=system_prompt, context=context, question=question.strip(), sources=sources)
