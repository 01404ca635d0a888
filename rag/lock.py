"""One process owns a data dir's RAG state (the embedded Qdrant shard and the catalog).

An exclusive, non-blocking `flock` on `<data_dir>/rag/owner.lock`, held for the life of the
service. The kernel drops it when the process dies (even by kill -9), so a crash never leaves a
stale lock behind. A second opener gets `StoreBusyError`, whose message tells the user to go
through the running server instead.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class StoreBusyError(RuntimeError):
    """The data dir's RAG store is owned by another process (typically a running `appliance serve`)."""


class OwnerLock:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a+")  # noqa: SIM115 - held open for the lifetime of the lock
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(self._file)
            self._file.close()
            raise StoreBusyError(
                f"the RAG store in {path.parent.parent} is in use by another process{owner}; "
                "ingest through the running server with --url and --api-key"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()


def _read_owner(handle) -> str:
    handle.seek(0)
    pid = handle.read().strip()
    return f" (pid {pid})" if pid.isdigit() else ""
