"""Token-aware, structure-respecting chunking.

A document is parsed into blocks (paragraphs and heading lines, Markdown-style). Blocks are packed
greedily into chunks of at most `max_tokens` tokens of the embedder's own tokenizer; a chunk never
spans two sections (a heading always opens a new chunk) and closes at a paragraph boundary whenever
the next paragraph would not fit. A paragraph larger than a chunk is split at sentence ends, and a
sentence larger than a chunk at token boundaries. Consecutive chunks of a section share up to
`overlap_tokens` tokens of trailing sentences. Every chunk is an exact slice of the document text,
so its char offsets point at the source. The function is pure: same text and settings, same chunks.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rag.types import Chunk

_HEADING = re.compile(r"#{1,6}[ \t]+\S")
_FENCE = re.compile(r"(```|~~~)")
_SENTENCE = re.compile(r"\S.*?(?:[.!?][\"')\]]*(?=\s)|$)", flags=re.DOTALL)


class TokenSpans:
    """Character spans of the tokens of a text, from a Hugging Face (fast) tokenizer's backend.

    Truncation and padding are switched off on a private copy: the chunker must see every token.
    """

    def __init__(self, hf_tokenizer) -> None:
        from tokenizers import Tokenizer

        backend = getattr(hf_tokenizer, "backend_tokenizer", hf_tokenizer)
        self._tokenizer = Tokenizer.from_str(backend.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def __call__(self, text: str) -> list[tuple[int, int]]:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return [span for span in encoding.offsets if span[1] > span[0]]


@dataclass(slots=True, frozen=True)
class ChunkerConfig:
    max_tokens: int = 256
    overlap_tokens: int = 0


@dataclass(slots=True, frozen=True)
class _Block:
    start: int
    end: int
    heading_level: int  # 0 for a paragraph


@dataclass(slots=True)
class _Unit:
    """A piece that is never split further (a sentence, or a token window of a huge sentence)."""

    start: int
    end: int
    num_tokens: int
    opens_block: bool
    is_heading: bool = False


class Chunker:
    def __init__(self, token_spans, config: ChunkerConfig | None = None) -> None:
        self._token_spans = token_spans
        self.config = config or ChunkerConfig()
        if self.config.max_tokens < 8 or not 0 <= self.config.overlap_tokens < self.config.max_tokens // 2:
            raise ValueError("chunker needs max_tokens >= 8 and 0 <= overlap_tokens < max_tokens / 2")

    def chunk(self, text: str, doc_id: str, source: str, title: str = "") -> list[Chunk]:
        counter = _TokenCounter(self._token_spans(text))
        chunks: list[Chunk] = []
        for heading_path, blocks in _sections(text, parse_blocks(text, title), title):
            units = [u for block in blocks for u in self._units(text, block, counter)]
            for start, end in self._pack(units):
                chunks.append(Chunk(doc_id, source, len(chunks), start, end, text[start:end], heading_path))
        return chunks

    def _units(self, text: str, block: _Block, counter: _TokenCounter) -> list[_Unit]:
        num_tokens = counter.count(block.start, block.end)
        if num_tokens <= self.config.max_tokens:
            return [_Unit(block.start, block.end, num_tokens, True, block.heading_level > 0)]
        units: list[_Unit] = []
        for match in _SENTENCE.finditer(text, block.start, block.end):
            start, end = match.start(), match.end()
            for w_start, w_end in counter.windows(start, end, self.config.max_tokens):
                units.append(_Unit(w_start, w_end, counter.count(w_start, w_end), not units))
        return units

    def _pack(self, units: Sequence[_Unit]) -> list[tuple[int, int]]:
        """Greedy packing: close a chunk when the next unit does not fit, or when a new paragraph
        starts and the chunk is full enough that the paragraph would be cut in two (a chunk holding
        only its section's heading never closes early: the heading stays with its text)."""
        spans: list[tuple[int, int]] = []
        first = 0
        while first < len(units):
            last, total = first, units[first].num_tokens
            while last + 1 < len(units) and total + units[last + 1].num_tokens <= self.config.max_tokens:
                only_heading = all(u.is_heading for u in units[first : last + 1])
                if (
                    units[last + 1].opens_block
                    and not only_heading
                    and not self._block_fits(units, last + 1, total)
                ):
                    break
                last += 1
                total += units[last].num_tokens
            spans.append((units[first].start, units[last].end))
            first = self._next_start(units, first, last)
        return spans

    def _block_fits(self, units: Sequence[_Unit], index: int, total: int) -> bool:
        """True when the whole paragraph starting at `index` fits in what is left of the chunk."""
        block_tokens = units[index].num_tokens
        for unit in units[index + 1 :]:
            if unit.opens_block:
                break
            block_tokens += unit.num_tokens
        return total + block_tokens <= self.config.max_tokens

    def _next_start(self, units: Sequence[_Unit], first: int, last: int) -> int:
        """Step back over trailing units worth at most overlap_tokens, always moving forward."""
        nxt, overlap = last + 1, 0
        while nxt - 1 > first and overlap + units[nxt - 1].num_tokens <= self.config.overlap_tokens:
            nxt -= 1
            overlap += units[nxt].num_tokens
        return nxt if nxt < len(units) else len(units)


class _TokenCounter:
    """Counts the tokens that start inside a character range, by bisection over the token spans."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        self._starts = [s for s, _ in spans]
        self._ends = [e for _, e in spans]

    def count(self, start: int, end: int) -> int:
        return bisect.bisect_left(self._starts, end) - bisect.bisect_left(self._starts, start)

    def windows(self, start: int, end: int, max_tokens: int) -> list[tuple[int, int]]:
        """Cut [start, end) at token boundaries into pieces of at most max_tokens tokens."""
        lo, hi = bisect.bisect_left(self._starts, start), bisect.bisect_left(self._starts, end)
        if hi - lo <= max_tokens:
            return [(start, end)]
        pieces = []
        for first in range(lo, hi, max_tokens):
            last = min(first + max_tokens, hi) - 1
            piece_start = start if first == lo else self._starts[first]
            pieces.append((piece_start, end if last == hi - 1 else self._ends[last]))
        return pieces


def parse_blocks(text: str, title: str = "") -> list[_Block]:
    """Paragraphs (separated by blank lines) and Markdown heading lines, ignoring `#` inside fences.

    A first paragraph that is exactly the document title (plain-text articles) counts as a heading.
    """
    blocks: list[_Block] = []
    block_start: int | None = None
    in_fence = False
    position = 0
    for line in text.splitlines(keepends=True):
        line_start, position = position, position + len(line)
        stripped = line.strip()
        if _FENCE.match(stripped):
            in_fence = not in_fence
        if not in_fence and not stripped:
            block_start = _close(blocks, text, block_start, line_start)
        elif not in_fence and _HEADING.match(stripped) and stripped == line.rstrip("\n"):
            block_start = _close(blocks, text, block_start, line_start)
            level = len(stripped) - len(stripped.lstrip("#"))
            blocks.append(_Block(line_start, line_start + len(line.rstrip("\n")), level))
        elif block_start is None:
            block_start = line_start
    _close(blocks, text, block_start, len(text))
    if blocks and title and not blocks[0].heading_level and text[blocks[0].start : blocks[0].end] == title:
        blocks[0] = _Block(blocks[0].start, blocks[0].end, 1)
    return blocks


def _close(blocks: list[_Block], text: str, start: int | None, end: int) -> None:
    if start is not None:
        end = start + len(text[start:end].rstrip())
        if end > start:
            blocks.append(_Block(start, end, 0))
    return None


def _sections(text: str, blocks: list[_Block], title: str) -> list[tuple[str, list[_Block]]]:
    """Group blocks into sections, each opened by a heading; label each with its heading path."""
    sections: list[tuple[str, list[_Block]]] = []
    path: list[tuple[int, str]] = []
    current: list[_Block] = []
    for block in blocks:
        if block.heading_level and current:
            sections.append((_label(title, path), current))
            current = []
        if block.heading_level:
            path = [p for p in path if p[0] < block.heading_level]
            path.append((block.heading_level, text[block.start : block.end].lstrip("#").strip()))
        current.append(block)
    if current:
        sections.append((_label(title, path), current))
    return sections


def _label(title: str, path: list[tuple[int, str]]) -> str:
    names = [name for _, name in path]
    if title and (not names or names[0] != title):
        names.insert(0, title)
    return " > ".join(names)
