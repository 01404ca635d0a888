"""Subprocess body for the crash test: ingest a folder, printing a line after every stored window.

Usage: python -m tests.rag.ingest_worker DATA_DIR CORPUS SETTINGS_JSON
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from rag import RagService, RagSettings

TENANT, COLLECTION = "crash", "docs"


class PrintingProgress:
    def begin(self, num_files: int, num_bytes: int) -> None:
        print(f"begin {num_files}", flush=True)

    def advance(self, num_chunks: int, num_bytes: float) -> None:
        if num_chunks:
            print(f"advance {num_chunks}", flush=True)

    def file_done(self, result) -> None:
        print(f"file {result.status} {result.source}", flush=True)


def settings_from_json(text: str) -> RagSettings:
    return replace(RagSettings(), **json.loads(text))


def main() -> None:
    data_dir, corpus, settings = Path(sys.argv[1]), Path(sys.argv[2]), settings_from_json(sys.argv[3])
    service = RagService(data_dir, device="cpu", settings=settings)
    summary = service.ingest_paths([corpus], TENANT, COLLECTION, progress=PrintingProgress())
    service.close()
    print(f"done {summary.num_added} {summary.num_replaced} {summary.num_skipped}", flush=True)


if __name__ == "__main__":
    main()
