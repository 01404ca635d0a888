"""Which directory holds the live Qdrant Edge shard, and how a freshly built one replaces it.

An index build works on a copy of the shard (see `rag.store.edge_index`), so after a build there
are two shard directories and the appliance must switch from one to the other in a way a crash
cannot tear. The live directory is named by a one-line pointer file next to it, replaced
atomically (write, fsync, rename); before the first build there is no pointer and the live shard
is the configured path itself (the layout of data dirs made before builds existed). So:

    rag/edge            the first shard (live until the first build)
    rag/edge.current    pointer: "edge.3"
    rag/edge.3          the live shard
    rag/edge.build      a copy being built (removed when a build ends or at the next open)

A crash before the pointer moves leaves the old shard live (its WAL holds every write); after,
the new one, which already holds every write that reached the old one during the build.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True, frozen=True)
class ShardDirs:
    base: Path  # the configured path: data/rag/edge

    @property
    def pointer(self) -> Path:
        return self.base.with_name(self.base.name + ".current")

    @property
    def build(self) -> Path:
        return self.base.with_name(self.base.name + ".build")

    def live(self) -> Path:
        if not self.pointer.exists():
            return self.base
        name = self.pointer.read_text().strip()
        if self._generation(name) is None:
            raise ValueError(f"corrupt shard pointer {self.pointer}: {name!r}")
        return self.base.with_name(name)

    def next_generation(self) -> Path:
        current = self._generation(self.live().name)
        return self.base.with_name(f"{self.base.name}.{(current or 0) + 1}")

    def point_to(self, shard: Path) -> None:
        """Make `shard` the live directory, atomically and durably."""
        tmp = self.pointer.with_name(self.pointer.name + ".tmp")
        with open(tmp, "w") as handle:
            handle.write(shard.name + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.pointer)
        _fsync_dir(self.base.parent)

    def remove_stale(self) -> None:
        """Delete every shard directory of ours except the live one (old generations, a build copy)."""
        live = self.live()
        for path in self.base.parent.iterdir():
            ours = path in (self.base, self.build) or self._generation(path.name) is not None
            if ours and path != live and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)

    def _generation(self, name: str) -> int | None:
        match = re.fullmatch(re.escape(self.base.name) + r"\.(\d+)", name)
        return int(match.group(1)) if match else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
