"""Validation of what the operator types into the dashboard's forms, before anything is sent.

Each check returns an error message for the field (shown inline under it) or the cleaned value;
the server validates again, and its refusals are shown the same way.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

# The server's rule for tenant and collection names (appliance/server/store.py, rag/types.py).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
# The file types the appliance's loaders read (txt, md, html, pdf and their spellings).
SUPPORTED_SUFFIXES = (".txt", ".text", ".md", ".markdown", ".html", ".htm", ".xhtml", ".pdf")
MAX_FILES = 1000


@dataclass(slots=True, frozen=True)
class LocalFile:
    source: str  # the document's name on the server: the absolute path, as `appliance ingest` sends it
    path: Path


def name_error(value: str, what: str) -> str | None:
    if not value.strip():
        return f"enter a {what} name"
    if not NAME_RE.fullmatch(value.strip()):
        return f"a {what} name is {NAME_RULE}"
    return None


def limit_value(text: str) -> tuple[int | None, str | None]:
    """A tenant limit typed as a whole number; empty = null (the default). Returns (value, error)."""
    cleaned = text.strip().replace("_", "").replace(",", "")
    if not cleaned:
        return None, None
    try:
        value = int(cleaned)
    except ValueError:
        return None, "enter a whole number, or leave it empty for the default"
    if value < 0:
        return None, "a limit cannot be negative"
    return value, None


def weight_value(text: str) -> tuple[float | None, str | None]:
    """A scheduling weight: a positive number (the server also bounds it). Returns (value, error)."""
    try:
        value = float(text.strip())
    except ValueError:
        return None, "enter a positive number, such as 1 or 2.5"
    if not math.isfinite(value) or value <= 0:
        return None, "the weight must be a positive number"
    return value, None


def find_files(text: str) -> tuple[list[LocalFile], str | None]:
    """The files named by `text` (paths separated by spaces, quoted when they contain one);
    directories are searched recursively for supported files. Returns (files, error)."""
    try:
        given = shlex.split(text)
    except ValueError as exc:
        return [], f"cannot read the paths: {exc}"
    if not given:
        return [], "enter a file or directory path"
    found: dict[Path, LocalFile] = {}
    for raw in given:
        path = Path(raw).expanduser()
        error = _add_path(path, found)
        if error:
            return [], error
    if len(found) > MAX_FILES:
        return [], f"{len(found)} files: ingest at most {MAX_FILES} at a time"
    return [found[p] for p in sorted(found)], None


def _add_path(path: Path, found: dict[Path, LocalFile]) -> str | None:
    if path.is_dir():
        files = list(_walk(path))
        if not files:
            return f"no .txt, .md, .html or .pdf files under {path}"
        for file in files:
            found.setdefault(file, LocalFile(str(file), file))
        return None
    if not path.exists():
        return f"no such file or directory: {path}"
    if not path.is_file():
        return f"not a regular file: {path}"
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        suffix = path.suffix.lower() or "(none)"
        return f"unsupported file type {suffix!r}: use {', '.join(SUPPORTED_SUFFIXES)}"
    resolved = path.resolve()
    found.setdefault(resolved, LocalFile(str(resolved), resolved))
    return None


def _walk(root: Path):
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(folder, name)
            if not name.startswith(".") and path.suffix.lower() in SUPPORTED_SUFFIXES and path.is_file():
                yield path.resolve()
