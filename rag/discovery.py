"""Expand the paths given to `ingest` into a sorted, de-duplicated list of files.

Directories are walked recursively (hidden entries skipped, symlinked directories not followed).
`include` / `exclude` are shell globs matched against each file's path relative to the directory
given and against its bare name (`*.md`, `drafts/*`). Without `include`, every supported type is
taken and other files are reported, so nothing is dropped silently.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rag.loaders import SUPPORTED_SUFFIXES


@dataclass(slots=True, frozen=True)
class FoundFile:
    path: Path  # absolute
    size: int


@dataclass(slots=True, frozen=True)
class FileProblem:
    source: str
    error: str


def discover(
    paths: Iterable[str | Path], include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> tuple[list[FoundFile], list[FileProblem]]:
    files: dict[Path, FoundFile] = {}
    problems: list[FileProblem] = []
    for given in paths:
        root = Path(given).expanduser().absolute()
        if root.is_dir():
            _walk(root, include or (), exclude or (), files, problems)
        elif root.exists() or root.is_symlink():
            _add(root, files, problems)
        else:
            problems.append(FileProblem(str(root), "no such file or directory"))
    return [files[p] for p in sorted(files)], problems


def _walk(root: Path, include, exclude, files: dict, problems: list) -> None:
    def on_error(exc: OSError) -> None:
        problems.append(FileProblem(str(exc.filename or root), _os_error(exc)))

    for folder, dirnames, filenames in os.walk(root, onerror=on_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(folder, name)
            relative = path.relative_to(root).as_posix()
            if name.startswith(".") or _matches(relative, name, exclude):
                continue
            if include and not _matches(relative, name, include):
                continue
            if not include and path.suffix.lower() not in SUPPORTED_SUFFIXES:
                problems.append(
                    FileProblem(str(path), f"unsupported file type {path.suffix.lower() or '(none)'!r}")
                )
                continue
            _add(path, files, problems)


def _matches(relative: str, name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(relative, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def _add(path: Path, files: dict, problems: list) -> None:
    try:
        resolved = path.resolve(strict=True)
        if not resolved.is_file():
            problems.append(FileProblem(str(path), "not a regular file"))
            return
        files[resolved] = FoundFile(resolved, resolved.stat().st_size)
    except OSError as exc:
        problems.append(FileProblem(str(path), _os_error(exc)))


def _os_error(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()
