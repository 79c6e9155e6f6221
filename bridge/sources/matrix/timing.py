"""Debug timing of the live path, for `bench/capture.py`: off unless `CHATARCHIEF_TRACE_LATENCY` names a file.

Contract: `SyncTimer.from_env()` gives None (the normal case: every hook is one `is not None` test) or a timer
that appends one JSON line per sync batch to that file *after* the batch is durable, so writing it never delays
a commit. A line is `{"marks": [[stage, monotonic seconds], ...], "events": [event ids]}`; the stages are
`sync` (request sent), `http` (response headers in), `parsed` (nio's parse and our raw copy), `received`
(nio's state update and decryption), `normalised` (planned and normalised), `queued` (redactions and media
done, handed to the sink) and `durable` (the sink's commit returned). `time.monotonic` is CLOCK_MONOTONIC,
shared by every process on the host, so the bench compares it with its own clock. Ids only, never content.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import orjson

__all__ = ["ENV", "SyncTimer"]

ENV = "CHATARCHIEF_TRACE_LATENCY"


class SyncTimer:
    """Stamps of one sync batch at a time (see module docstring)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._marks: list[tuple[str, float]] = []

    @classmethod
    def from_env(cls) -> SyncTimer | None:
        path = os.environ.get(ENV)
        return cls(Path(path)) if path else None

    def start(self) -> None:
        self._marks = [("sync", time.monotonic())]

    def mark(self, stage: str) -> None:
        """Note `stage` now; only its first time in a batch counts (later HTTP calls are not the sync's)."""
        if self._marks and all(name != stage for name, _ in self._marks):
            self._marks.append((stage, time.monotonic()))

    def flush(self, event_ids: Iterable[str]) -> None:
        if not self._marks:
            return
        line = orjson.dumps({"marks": self._marks, "events": list(event_ids)}) + b"\n"
        self._marks = []
        with self._path.open("ab") as f:
            f.write(line)
