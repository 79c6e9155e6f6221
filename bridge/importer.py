"""Import a file of chat events into the log (`chatarchief import`).

Streams the file line by line (memory stays flat whatever its size), normalises
each line with the source's pure normaliser, and appends in group-commit batches.
A bad line never aborts the run: it is kept as an `unknown` event with its raw
bytes. While one batch commits (SQLite work on aiosqlite's thread) the next is
normalised, so parsing and fsync overlap. A signed checkpoint is written at the
end, so a truncated tail is caught by `verify`.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import UsageError
from bridge.events import Event, Kind
from bridge.log.store import AppendResult, LogStore, now_ms
from bridge.sources import matrix_events

BATCH = 256


class ImportFormat(enum.StrEnum):
    MATRIX_JSONL = "matrix-jsonl"


@dataclass
class ImportCounts:
    lines: int = 0
    appended: int = 0
    duplicates: int = 0
    unknown: int = 0
    blank: int = 0


def _lines(path: Path) -> Iterator[bytes]:
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    with fh:
        yield from fh


def _normalise_batch(lines: list[bytes], counts: ImportCounts) -> list[Event]:
    received = now_ms()
    out: list[Event] = []
    for line in lines:
        event = matrix_events.normalise(line.rstrip(b"\r\n"), received_at=received)
        if event.kind is Kind.UNKNOWN:
            counts.unknown += 1
        out.append(event)
    return out


async def import_file(
    store: LogStore,
    path: Path,
    fmt: ImportFormat = ImportFormat.MATRIX_JSONL,
    progress: Callable[[int], None] | None = None,
) -> ImportCounts:
    """Append every event in `path`; returns the counts. `progress(bytes_read)`."""
    if fmt is not ImportFormat.MATRIX_JSONL:
        raise UsageError(f"unsupported import format {fmt}")
    counts = ImportCounts()
    # Up to two batches in flight: one committing (SQLite thread), one sealing.
    inflight: deque[asyncio.Task[AppendResult]] = deque()
    batch: list[bytes] = []
    read = 0
    try:
        for line in _lines(path):
            read += len(line)
            if not line.strip():
                counts.blank += 1
                continue
            counts.lines += 1
            batch.append(line)
            if len(batch) >= BATCH:
                inflight.append(asyncio.create_task(store.append_events(_normalise_batch(batch, counts))))
                batch = []
                await asyncio.sleep(0)  # let the new batch start sealing
                while len(inflight) >= 2:
                    _tally(await inflight.popleft(), counts)
                if progress is not None:
                    progress(read)
        if batch:
            inflight.append(asyncio.create_task(store.append_events(_normalise_batch(batch, counts))))
        while inflight:
            _tally(await inflight.popleft(), counts)
    finally:
        for task in inflight:
            task.cancel()
    await store.checkpoint()
    if progress is not None:
        progress(read)
    return counts


def _tally(result: AppendResult, counts: ImportCounts) -> None:
    counts.appended += result.appended
    counts.duplicates += result.duplicates
