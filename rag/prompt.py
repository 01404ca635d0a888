"""Prompt assembly for retrieval-augmented answers, laid out for the engine's prefix cache.

Order: system prompt, then the retrieved chunks, then the question. The chunks are sorted
canonically (by source, doc_id, chunk_index — never by score) and each is rendered by one fixed
template, so whenever the same chunks come back, in whatever score order, the prompt bytes up to
the question are identical and the engine can reuse their KV blocks.

`order="relevance"` is the alternative for answer quality: chunks by ascending retrieval score,
so the most relevant one sits right before the question (small models attend most to what is
near the question). It gives up prefix sharing; it is an option, not the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from rag.types import Hit

CONTEXT_HEADER = "Context:\n"
QUESTION_HEADER = "Question: "
CHUNK_ORDERS = ("canonical", "relevance")


@dataclass(slots=True, frozen=True)
class RagPrompt:
    system: str
    context: str
    question: str
    sources: list[dict]
    chunk_texts: tuple[str, ...] = ()  # each chunk's text as it appears in the context, in order

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


def relevance_order(hits: list[Hit]) -> list[Hit]:
    """Least relevant first, most relevant last (nearest the question).

    `hits` come best first; of equal scores the better-ranked one still ends up nearer the question.
    """
    unique = {hit.id: hit for hit in hits}
    return sorted(reversed(list(unique.values())), key=lambda h: h.score)


def order_hits(hits: list[Hit], order: str = "canonical") -> list[Hit]:
    if order == "canonical":
        return canonical_order(hits)
    if order == "relevance":
        return relevance_order(hits)
    raise ValueError(f"chunk order must be one of {', '.join(CHUNK_ORDERS)}, got {order!r}")


def render_chunk(label: int, hit: Hit) -> str:
    """A label line, then the chunk's text (the part that is the same wherever the chunk goes, which
    chunk-level KV reuse keys on)."""
    name = PurePosixPath(hit.source.replace("\\", "/")).name or hit.source
    return f"[{label}] {name}\n{hit.text.strip()}"


def build_rag_prompt(
    system_prompt: str, hits: list[Hit], question: str, order: str = "canonical"
) -> RagPrompt:
    ordered = order_hits(hits, order)
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
    return RagPrompt(system=system_prompt, context=context, question=question.strip(), sources=sources,
                     chunk_texts=tuple(hit.text.strip() for hit in ordered))
