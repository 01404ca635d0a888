"""Loaders and discovery: every format to clean text, every bad file to one clear error."""

from __future__ import annotations

import pytest

from rag.discovery import discover
from rag.loaders import LoadError, load_document
from tests.rag.conftest import APOLLO_PDF, PAGE_HTML, VOLCANO_MD
from tests.rag.pdf import make_pdf


def test_plain_text_is_normalised_and_titled():
    doc = load_document("notes/field_notes.txt", b"Zebras\r\n\r\n\r\n\r\nThey   graze.  \r\nA\tB\x07\n")
    assert doc.text == "Zebras\n\nThey   graze.\nA    B"
    assert doc.title == "Zebras"


def test_text_without_a_title_line_is_titled_from_its_file_name():
    doc = load_document("dir/oil_price-history.txt", b"Prices rose sharply in 1973. Then they fell.")
    assert doc.title == "oil price history"


def test_markdown_keeps_headings():
    doc = load_document("g.md", VOLCANO_MD.encode())
    assert doc.title == "Volcanoes"
    assert "## Iceland" in doc.text


def test_html_drops_scripts_and_styles_and_keeps_structure():
    doc = load_document("p.html", PAGE_HTML.encode())
    assert doc.title == "Coffee"
    assert "decoyword" not in doc.text and "color: red" not in doc.text
    assert "# Coffee roasting" in doc.text
    paragraphs = doc.text.split("\n\n")
    assert "Light roasts keep more of the acidity and floral aroma of the coffee bean." in paragraphs


def test_pdf_text_comes_out_page_by_page():
    doc = load_document("a.pdf", APOLLO_PDF)
    assert doc.title == "Apollo 11"
    assert "20 July 1969" in doc.text and "Michael Collins" in doc.text
    assert doc.text.index("Eagle") < doc.text.index("Armstrong")


def test_utf16_with_bom_is_accepted():
    assert load_document("u.txt", "Grüße aus Köln".encode("utf-16")).text == "Grüße aus Köln"


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("junk.pdf", bytes(range(256)) * 4, "not a PDF"),
        ("broken.pdf", b"%PDF-1.4\n" + bytes(range(256)) * 4, "unreadable PDF"),
        ("scan.pdf", make_pdf([[]]), "no extractable text"),
        ("empty.txt", b"", "empty file"),
        ("blank.md", b"  \n\n \t\n", "no text"),
        ("latin1.txt", "café".encode("latin-1"), "not UTF-8"),
        ("bin.txt", b"\x00\x01\x02binary", "binary"),
        ("image.png", b"\x89PNG....", "unsupported file type '.png'"),
        ("noext", b"text", "unsupported file type"),
    ],
)
def test_bad_files_raise_one_clear_load_error(name, data, message):
    with pytest.raises(LoadError, match=message) as info:
        load_document(name, data)
    assert "\n" not in str(info.value)


def test_discovery_walks_recursively_with_globs(tmp_path):
    for rel in ["a.txt", "sub/b.md", "sub/deeper/c.html", "sub/skip.txt", ".hidden/d.txt", "e.bin", ".f.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    files, problems = discover([tmp_path], exclude=["sub/skip.txt"])
    assert [f.path.relative_to(tmp_path).as_posix() for f in files] == [
        "a.txt",
        "sub/b.md",
        "sub/deeper/c.html",
    ]
    assert [(p.source.endswith("e.bin"), "unsupported" in p.error) for p in problems] == [(True, True)]
    only_md, problems = discover([tmp_path], include=["*.md"])
    assert [f.path.name for f in only_md] == ["b.md"] and problems == []


def test_discovery_reports_missing_paths_and_dedupes(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    files, problems = discover([tmp_path / "a.txt", tmp_path, tmp_path / "missing"])
    assert [f.path.name for f in files] == ["a.txt"]
    assert [p.error for p in problems] == ["no such file or directory"]
