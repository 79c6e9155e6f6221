"""Import a file of chat events into the log (`chatarchief import`).

Streams the file line by line (memory stays flat whatever its size), normalises
each line with the source's pure normaliser, and appends in group-commit batches.
A bad line never aborts the run: it is kept as an `unknown` event with its raw
bytes. The work is pipelined: the next batch is parsed and sealed on the event
loop while aiosqlite's thread commits the one before (the dedup lookup runs on
its own connection, `log.dedup`, so it does not wait for that commit, and only
for the tags the writer's filter has seen: schema 3, docs/log-format.md). A file is
queued input, so its batches are large (`BATCH`): one transaction and one fsync
per 4096 lines instead of per 256 cut SQLite's time per row by more than half;
live capture keeps its own small batches (latency). A signed checkpoint is
written at the end, so a truncated tail is caught by `verify`.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bridge.clock import now_ms
from bridge.errors import UsageError
from bridge.events import MATRIX
from bridge.log.format import RecordType
from bridge.log.store import AppendResult
from bridge.log.writer import Appender
from bridge.sources.matrix.fast import encode_line

#: Lines per group commit (bench/ingest.py: 256 -> 4096 took 30k events from ~10.5k to ~14k events/s).
BATCH = 4096
#: Lines encoded between two yields to the event loop (see `_encode_yielding`).
YIELD_EVERY = 256


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


Entry = tuple[RecordType, str, str, str, bytes]


def encode_batch(lines: list[bytes], received: int) -> tuple[list[Entry], int]:
    """Normalise and canonically encode a batch: (log entries, how many are `unknown`).

    Pure: runs on the event loop while the previous batch commits on aiosqlite's thread.
    """
    entries: list[Entry] = []
    unknown = 0
    for line in lines:
        conversation, event_id, payload, is_unknown = encode_line(line.rstrip(b"\r\n"), received)
        unknown += is_unknown
        entries.append((RecordType.EVENT, MATRIX, conversation, event_id, payload))
    return entries, unknown


def _batches(path: Path, counts: ImportCounts, progress: Callable[[int], None] | None) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    read = 0
    for line in _lines(path):
        read += len(line)
        if not line.strip():
            counts.blank += 1
            continue
        counts.lines += 1
        batch.append(line)
        if len(batch) >= BATCH:
            yield batch
            batch = []
            if progress is not None:
                progress(read)
    if batch:
        yield batch
    if progress is not None:
        progress(read)


async def import_file(
    store: Appender,
    path: Path,
    fmt: ImportFormat = ImportFormat.MATRIX_JSONL,
    progress: Callable[[int], None] | None = None,
) -> ImportCounts:
    """Append every event in `path`; returns the counts. `progress(bytes_read)`."""
    if fmt is not ImportFormat.MATRIX_JSONL:
        raise UsageError(f"unsupported import format {fmt}")
    counts = ImportCounts()
    # Pipeline: one batch sealing on the event loop while the one before commits.
    appending: deque[asyncio.Task[AppendResult]] = deque()
    try:
        for lines in _batches(path, counts, progress):
            entries, unknown = await _encode_yielding(lines, now_ms())
            counts.unknown += unknown
            appending.append(asyncio.create_task(store.append_records(entries)))
            del entries  # the task holds them until sealed, no longer (memory)
            await asyncio.sleep(0)  # let it start sealing
            while len(appending) >= 2:
                _tally(await appending.popleft(), counts)
        while appending:
            _tally(await appending.popleft(), counts)
    finally:
        for task in appending:
            task.cancel()
    await store.checkpoint()
    return counts


async def _encode_yielding(lines: list[bytes], received: int) -> tuple[list[Entry], int]:
    """`encode_batch` in slices of `YIELD_EVERY` lines, yielding to the loop between them.

    Why: the batch before is waiting for the loop to send its insert and commit to SQLite's thread (each
    aiosqlite call is a hop back to the loop); one 4096-line encode would hold that up for its whole length,
    leaving SQLite idle. Between slices it gets going, so the commit runs while the rest is encoded.
    """
    entries: list[Entry] = []
    unknown = 0
    for start in range(0, len(lines), YIELD_EVERY):
        part, part_unknown = encode_batch(lines[start : start + YIELD_EVERY], received)
        entries += part
        unknown += part_unknown
        await asyncio.sleep(0)
    return entries, unknown


def _tally(result: AppendResult, counts: ImportCounts) -> None:
    counts.appended += result.appended
    counts.duplicates += result.duplicates
