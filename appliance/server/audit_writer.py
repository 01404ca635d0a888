"""The audit log's writer thread: requests hand their rows over and never wait for SQLite.

Rows go into a bounded queue; one thread takes whatever has piled up (a batch) and writes it. The
event loop only enqueues: when the queue is full (SQLite stalled for long), the request that ends
waits for room in a worker thread, after its response is complete, so no stream is held up and no
row is dropped. `flush()` lets admin reads see every row handed over before them; `close()` writes
everything still queued and stops the thread (the server calls it last, at shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass

from appliance.server.store import AuditEntry, ControlStore

log = logging.getLogger(__name__)

QUEUE_ROWS = 10_000
BATCH_ROWS = 256
WRITE_ATTEMPTS = 3
RETRY_PAUSE_S = 0.5


@dataclass(slots=True)
class _Row:
    entry: AuditEntry
    count_usage: bool


@dataclass(slots=True)
class _Flush:
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future


_STOP = object()


class AuditWriter:
    def __init__(self, store: ControlStore, max_rows: int = QUEUE_ROWS) -> None:
        self.store = store
        self._queue: queue.Queue = queue.Queue(max_rows)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.rows_written = 0
        self.rows_lost = 0

    async def submit(self, entry: AuditEntry, count_usage: bool) -> None:
        """Hand a row over; waits (off the loop) only while the queue is full."""
        self._ensure_thread()
        row = _Row(entry, count_usage)
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            await asyncio.to_thread(self._queue.put, row)

    async def flush(self, timeout: float) -> bool:
        """Wait until every row handed over so far is written; False after `timeout` seconds."""
        if self._thread is None:
            return True
        loop = asyncio.get_running_loop()
        marker = _Flush(loop, loop.create_future())
        try:
            self._queue.put_nowait(marker)
        except queue.Full:
            await asyncio.to_thread(self._queue.put, marker)
        try:
            await asyncio.wait_for(asyncio.shield(marker.done), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Write every queued row, then stop the thread (blocking; call from a worker thread)."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH_ROWS:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if not self._write(batch):
                return

    def _write(self, batch: list) -> bool:
        """Write a batch in order; False once the stop marker is reached."""
        for item in batch:
            if item is _STOP:
                return False
            if isinstance(item, _Flush):
                _wake(item)
            else:
                self._write_row(item)
        return True

    def _write_row(self, row: _Row) -> None:
        for attempt in range(WRITE_ATTEMPTS):
            try:
                self.store.record(row.entry, row.count_usage)
                self.rows_written += 1
                return
            except Exception:  # a locked or failing database: retry, then log the lost row
                if attempt + 1 == WRITE_ATTEMPTS:
                    self.rows_lost += 1
                    log.exception("could not write the audit row for %s", row.entry.request_id)
                else:
                    time.sleep(RETRY_PAUSE_S)


def _wake(marker: _Flush) -> None:
    with contextlib.suppress(RuntimeError):  # a loop that is gone (shutdown) has nobody waiting
        marker.loop.call_soon_threadsafe(_resolve, marker.done)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
