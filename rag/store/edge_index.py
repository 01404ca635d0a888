"""Building the vector index of the Qdrant Edge shard without stopping searches.

What qdrant-edge-py 0.9 does (measured): `EdgeShard.optimize()` builds HNSW and merges segments
synchronously and holds the GIL the whole time (a Python thread that ticks every millisecond got
one tick during a 12 s build). While it runs no other thread of the process runs at all: not a
search, not the server's event loop. No lock inside the process can fix that, so a build runs in
a child process, on a copy of the shard (`EdgeStore._build` does the steps):

1. under the store's write gate (writes wait; searches go on): flush, copy the live shard to
   `edge.build`, start journaling every write;
2. a child process (at lower CPU priority) loads the copy, optimizes and flushes it, while this
   process keeps searching and writing the live shard;
3. the copy becomes the next generation (`rag.store.edge_dirs`): this process loads it, replays the
   journal onto it under the write gate, moves the pointer and swaps the shard object under the
   shard lock. Searches wait for the GIL only while the built shard loads (0.2 s at 20k chunks).

When to build. Qdrant Edge has no background optimizer, and an optimize after a small delta is
not incremental: with 12k chunks indexed and 8k new, it re-indexed and merged all 20k (26 s, against
12 s for the first 12k). Building after every upload would make each upload pay a full rebuild.
So a build starts when the unindexed part (chunks written since the last build) reaches
max(`min_chunks`, `fraction` × all chunks). With the defaults, 2,000 and 10%: a search brute-forces
at most ~2,000 vectors per tenant on small stores (about a millisecond; plain search over 20k
measured 12 ms hybrid, 3 ms once indexed), and because each rebuild of N chunks follows at least
0.1 N new ones, rebuild work per ingested chunk stays constant as the store grows. The shard's own
indexing threshold is set to `min_chunks` vectors, so the optimizer indexes what we ask it to.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_CHILD = (
    "import os, sys\n"
    "os.nice(10)\n"
    "import qdrant_edge as qe\n"
    "shard = qe.EdgeShard.load(sys.argv[1])\n"
    "changed = shard.optimize()\n"
    "shard.flush()\n"
    "shard.close()\n"
    "print(int(changed))\n"
)


class BuildCancelled(Exception):
    """The store closed while a build was running; the copy is thrown away."""


@dataclass(slots=True, frozen=True)
class IndexPolicy:
    min_chunks: int = 2000
    fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.min_chunks < 1 or not 0.0 <= self.fraction <= 1.0:
            raise ValueError("index policy needs min_chunks >= 1 and 0 <= fraction <= 1")

    def needs_build(self, unindexed: int, points: int) -> bool:
        return unindexed >= max(self.min_chunks, self.fraction * points)

    def indexing_threshold_kb(self, dimension: int) -> int:
        """Qdrant's per-segment indexing threshold matching `min_chunks`: Qdrant indexes a segment
        whose dense vectors *exceed* this many KB, so it sits just under `min_chunks` vectors."""
        return max(1, self.min_chunks * dimension * 4 // 1024 - 1)


def optimize_in_child(path: Path, stop: threading.Event, poll_s: float = 0.1) -> bool:
    """Optimize the shard at `path` in a child process; True when it changed anything."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while True:
        try:
            out, err = child.communicate(timeout=poll_s)
            break
        except subprocess.TimeoutExpired:
            if stop.is_set():
                child.kill()
                child.communicate()
                raise BuildCancelled() from None
    if child.returncode != 0:
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"index build exited with {child.returncode}: {last}")
    return out.strip().endswith("1")


class BackgroundIndexer:
    """One daemon thread that runs builds, one at a time, while the store says one is needed."""

    def __init__(self, needed: Callable[[], bool], build: Callable[[threading.Event], None]) -> None:
        self._needed, self._build = needed, build
        self._cond = threading.Condition()
        self._pending = self._busy = self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    @property
    def building(self) -> bool:
        return self._busy

    def request(self) -> None:
        """Check the policy soon (in the background) and build if it says so."""
        with self._cond:
            if self._closed:
                return
            self._pending = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="edge-indexer", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no build is running or asked for; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not (self._pending or self._busy), timeout)

    def close(self) -> None:
        """Cancel a running build (its child is killed) and stop the thread."""
        with self._cond:
            self._closed = True
            self._stop.set()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    self._pending = False
                    self._cond.notify_all()
                    return
                self._pending, self._busy = False, True
            again = self._cycle()
            with self._cond:
                self._busy = False
                self._pending = self._pending or again
                self._cond.notify_all()

    def _cycle(self) -> bool:
        """One build if needed; True when another is needed right away (writes piled up meanwhile)."""
        try:
            if not self._needed():
                return False
            self._build(self._stop)
            self.last_error = None
            return self._needed()
        except BuildCancelled:
            return False
        except Exception as exc:  # a failed build leaves the live shard as it was; the next request retries
            self.last_error = str(exc)
            log.warning("vector index build failed: %s", exc)
            return False
