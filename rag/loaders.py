"""Turn file bytes into normalised text, one format at a time.

Every failure a user can cause (junk bytes, empty file, wrong encoding, unreadable PDF) becomes a
`LoadError` with a message fit for one line of output; the ingest loop reports it and moves on.
Headings are kept as Markdown `#` lines (HTML headings are converted) so the chunker can see
section boundaries in every format.
"""

from __future__ import annotations

import io
import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath

TEXT_SUFFIXES = (".txt", ".text")
MARKDOWN_SUFFIXES = (".md", ".markdown")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
PDF_SUFFIXES = (".pdf",)
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + MARKDOWN_SUFFIXES + HTML_SUFFIXES + PDF_SUFFIXES

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_MANY_BLANK_LINES = re.compile(r"\n{3,}")


class LoadError(Exception):
    """A file that cannot become text; the message says why in one line."""


@dataclass(slots=True, frozen=True)
class LoadedDoc:
    text: str
    title: str


def can_load(source: str) -> bool:
    return PurePosixPath(source.lower()).suffix in SUPPORTED_SUFFIXES


def load_document(source: str, data: bytes) -> LoadedDoc:
    """Dispatch on the file suffix; raise LoadError for anything that yields no usable text."""
    suffix = PurePosixPath(source.lower()).suffix
    if suffix not in SUPPORTED_SUFFIXES:
        raise LoadError(f"unsupported file type {suffix or '(no suffix)'!r}")
    if not data:
        raise LoadError("empty file")
    if suffix in PDF_SUFFIXES:
        doc = _load_pdf(data)
    elif suffix in HTML_SUFFIXES:
        doc = _load_html(decode_text(data))
    else:
        text = normalize_text(decode_text(data))
        doc = LoadedDoc(text=text, title=_markdown_title(text) or _plain_title(text))
    if not doc.text.strip():
        raise LoadError("no text content")
    return LoadedDoc(text=doc.text, title=doc.title or _title_from_source(source))


def decode_text(data: bytes) -> str:
    """Strict UTF-8 (BOMs honoured, UTF-16 with a BOM accepted); anything else is refused, not guessed."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise LoadError(f"invalid UTF-16 text at byte {exc.start}") from None
    if b"\x00" in data[:8192]:
        raise LoadError("binary data, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = data[exc.start]
        raise LoadError(f"not UTF-8 text (byte 0x{bad:02x} at offset {exc.start})") from None


def normalize_text(text: str) -> str:
    """NFC, Unix newlines, no control characters or trailing blanks, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL_CHARS.sub("", text.replace("\t", "    "))
    text = _TRAILING_SPACE.sub("\n", text + "\n")
    return _MANY_BLANK_LINES.sub("\n\n", text).strip("\n")


def _markdown_title(text: str) -> str:
    match = re.search(r"^#{1,6}[ \t]+(.+?)[ #]*$", text, flags=re.MULTILINE)
    return match.group(1).strip() if match else ""


def _plain_title(text: str) -> str:
    """A short first line followed by a blank line reads as a title (as in most plain-text articles)."""
    first, sep, rest = text.partition("\n")
    if not sep or not rest.startswith("\n"):
        return ""
    first = first.strip()
    if 0 < len(first) <= 100 and first[-1] not in ".!?:;,":
        return first
    return ""


def _title_from_source(source: str) -> str:
    stem = PurePosixPath(source.replace("\\", "/")).stem
    return re.sub(r"[_\-]+", " ", stem).strip()


# --- HTML -------------------------------------------------------------------------------------

_DROP_TAGS = ("script", "style", "noscript", "template", "svg", "head", "iframe", "object", "canvas")
_BLOCK_TAGS = (
    "p",
    "div",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "tr",
    "table",
    "section",
    "article",
    "aside",
    "header",
    "footer",
    "nav",
    "main",
    "blockquote",
    "pre",
    "figure",
    "figcaption",
    "form",
    "hr",
    "address",
    "details",
    "summary",
    "caption",
)
_PARA_MARK = "\ue000"
_LINE_MARK = "\ue001"


def _load_html(html: str) -> LoadedDoc:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(_DROP_TAGS):
        tag.decompose()
    for pre in soup("pre"):
        pre.replace_with(pre.get_text().replace("\n", _LINE_MARK))
    for heading in soup(re.compile(r"^h[1-6]$")):
        level = int(heading.name[1])
        text = heading.get_text(" ", strip=True)
        heading.replace_with(f"{_PARA_MARK}{'#' * level} {text}{_PARA_MARK}" if text else "")
    for br in soup("br"):
        br.replace_with(_LINE_MARK)
    for block in soup(_BLOCK_TAGS):
        block.insert_before(_PARA_MARK)
        block.insert_after(_PARA_MARK)
    flat = " ".join(soup.get_text().split())
    flat = flat.replace(_LINE_MARK, "\n").replace(_PARA_MARK, "\n\n")
    text = normalize_text("\n".join(line.strip() for line in flat.split("\n")))
    return LoadedDoc(text=text, title=title or _markdown_title(text))


# --- PDF --------------------------------------------------------------------------------------

_HYPHEN_BREAK = re.compile(r"(\w)-\n(\w)")


def _load_pdf(data: bytes) -> LoadedDoc:
    """Text of every page, pages separated by blank lines. Scanned (image-only) PDFs have no text."""
    import pypdf

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    if not data.lstrip()[:5].startswith(b"%PDF"):
        raise LoadError("not a PDF file (no %PDF header)")
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise LoadError("encrypted PDF (password required)")
        pages = [page.extract_text() or "" for page in reader.pages]
        title = str((reader.metadata or {}).get("/Title") or "").strip()
    except LoadError:
        raise
    except Exception as exc:  # pypdf raises many types for malformed files
        raise LoadError(f"unreadable PDF ({type(exc).__name__}: {_first_line(exc)})") from None
    text = "\n\n".join(_HYPHEN_BREAK.sub(r"\1\2", page) for page in pages)
    text = normalize_text(text)
    if not text.strip():
        raise LoadError("PDF has no extractable text (scanned images?)")
    return LoadedDoc(text=text, title=title)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]
