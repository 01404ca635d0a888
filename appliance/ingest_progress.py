"""Rich progress display for ingest (local or over HTTP): files, chunks, chunks/s and ETA.

The bar advances by bytes, so the ETA stays honest when one huge file sits among many small
ones; files that fail are printed above the bar as they happen, one line each.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn

from rag.types import DocResult, IngestSummary


class RichIngestProgress:
    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]ingest"),
            BarColumn(),
            TextColumn("{task.fields[files_done]}/{task.fields[num_files]} files"),
            TextColumn("{task.fields[chunks]} chunks"),
            TextColumn("{task.fields[rate]} chunks/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )
        self._task = None
        self._started = time.perf_counter()
        self._num_chunks = 0
        self._num_files_done = 0

    def __enter__(self) -> RichIngestProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._progress.stop()

    def begin(self, num_files: int, num_bytes: int) -> None:
        self._started = time.perf_counter()
        self._task = self._progress.add_task(
            "ingest", total=max(num_bytes, 1), files_done=0, num_files=num_files, chunks=0, rate="0.0"
        )

    def advance(self, num_chunks: int, num_bytes: float) -> None:
        self._num_chunks += num_chunks
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        self._progress.update(
            self._task, advance=num_bytes, chunks=self._num_chunks, rate=f"{self._num_chunks / elapsed:.1f}"
        )

    def file_done(self, result: DocResult) -> None:
        self._num_files_done += 1
        self._progress.update(self._task, files_done=self._num_files_done)
        if result.status == "failed":
            self._progress.console.print(
                f"failed: {result.source}: {result.error}", markup=False, highlight=False, soft_wrap=True
            )


def summary_line(summary: IngestSummary) -> str:
    rate = summary.num_chunks / summary.seconds if summary.seconds > 0 else 0.0
    return (
        f"added {summary.num_added}, skipped {summary.num_skipped} unchanged, "
        f"replaced {summary.num_replaced}, failed {summary.num_failed}; "
        f"{summary.num_chunks} chunks in {summary.seconds:.1f}s ({rate:.1f} chunks/s)"
    )
