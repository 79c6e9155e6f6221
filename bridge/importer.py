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

A large file on a machine with a spare CPU has its pure stage done in worker
processes (`bridge.import_pool` starts them, `bridge.import_worker` runs in
them: reading and cutting the lines, normalising, canonical encoding, the dedup
and conversation tags, the salted commitment and the zstd frame); this process
keeps what the log's order binds (the dedup decision, seq, header, AES-GCM,
leaf, commit: `LogStore.append_presealed`) and preseals a share of the batches
itself whenever it would otherwise wait for a worker (`bridge.import_pool`,
"Sharing the work"). Same records, counts, progress and checkpoint as in
process. An import handed to a running bot stays in process: the control
socket takes plain entries only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import gc
import os
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.clock import now_ms
from bridge.errors import UsageError
from bridge.events import MATRIX
from bridge.import_pool import WorkerPool
from bridge.import_worker import YIELD_EVERY, Tally, cut
from bridge.log.format import RecordType
from bridge.log.store import AppendResult, LogStore
from bridge.log.writer import Appender, LocalWriter
from bridge.sources.matrix.fast import encode_line

#: Lines per group commit (bench/ingest.py: 256 -> 4096 took 30k events from ~10.5k to ~14k events/s).
BATCH = 4096
#: Files smaller than this are imported in process: a worker's start-up (~0.1 s of CPU, up to 0.3 s on a
#: loaded machine) costs more than it saves below it (docs/log-format.md, "Import in a worker process").
WORKER_MIN_BYTES = 8 << 20
#: At most this many import workers: past two the writer's own work (AES-GCM, SQLite) is the bottleneck.
MAX_WORKERS = 2
#: The garbage collector's first threshold while an import runs (`_tuned_for_import`; Python's default is 700).
IMPORT_GC_THRESHOLD = 20_000
#: The interpreter's switch interval (seconds) while an import runs (`_tuned_for_import`; Python's default is
#: 0.005). bench/ingest.py at 10^5, 3 alternating rounds: 0.001 13.57-13.76 us/event, 0.002 13.63-13.95,
#: 0.0005 13.93-14.08, the default 14.06-14.77.
IMPORT_SWITCH_INTERVAL = 0.001


class ImportFormat(enum.StrEnum):
    MATRIX_JSONL = "matrix-jsonl"


@dataclass
class ImportCounts:
    lines: int = 0
    appended: int = 0
    duplicates: int = 0
    unknown: int = 0
    blank: int = 0


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


@dataclass(frozen=True, slots=True)
class _Job:
    """One batch ready to append: `append()` starts it; `read` is the bytes read at its cut when the batch
    was full (progress is reported after it, as it always was), else None."""

    append: Callable[[], Coroutine[Any, Any, AppendResult]]
    unknown: int
    read: int | None


def usable_workers() -> int:
    """Worker processes worth starting: the CPUs this process may use minus one (the writer's), at most
    `MAX_WORKERS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(0, min(cpus - 1, MAX_WORKERS))


def _local_store(store: Appender) -> LogStore | None:
    """The `LogStore` this process writes through, or None (the running bot writes: its control socket takes
    plain entries only, so that import stays in process)."""
    if isinstance(store, LogStore):
        return store
    if isinstance(store, LocalWriter):
        return store.store
    return None


def _plan(store: Appender, path: Path, workers: int | None) -> tuple[LogStore | None, int]:
    local = _local_store(store)
    if local is None:
        return None, 0
    if workers is None:
        try:
            small = path.stat().st_size < WORKER_MIN_BYTES
        except OSError:
            small = True  # the in-process reader names the error
        workers = 0 if small else usable_workers()
    return local, workers


async def import_file(
    store: Appender,
    path: Path,
    fmt: ImportFormat = ImportFormat.MATRIX_JSONL,
    progress: Callable[[int], None] | None = None,
    *,
    workers: int | None = None,
) -> ImportCounts:
    """Append every event in `path`; returns the counts. `progress(bytes_read)`.

    `workers`: worker processes for the pure stage (`bridge.import_pool`); None chooses (none for a file
    under `WORKER_MIN_BYTES`, a bot's writer or one usable CPU), 0 keeps everything in this process. The
    records, counts and progress are the same either way.
    """
    if fmt is not ImportFormat.MATRIX_JSONL:
        raise UsageError(f"unsupported import format {fmt}")
    counts = ImportCounts()
    local, workers = _plan(store, path, workers)
    with _tuned_for_import():
        expect = None if local is None else _expecting(local, path)
        if local is None or workers <= 0:
            tally = Tally()
            await _pipeline(_in_process(store, path, tally), counts, progress, expect)
        else:
            async with WorkerPool.start(path, local.tagging_key(), MATRIX, BATCH, workers) as pool:
                await _pipeline(_from_workers(local, pool), counts, progress, expect)
                assert pool.tally is not None
                tally = pool.tally
    counts.lines, counts.blank = tally.lines, tally.blank
    if progress is not None:
        progress(tally.read)
    await store.checkpoint()
    return counts


def _expecting(store: LogStore, path: Path) -> Callable[[int, int], None] | None:
    """`expect(read, lines)` after each full batch: tells `store` how many records the rest of the file holds at
    the lines per byte read so far (`LogStore.expect`: the dedup filter's growth), or None for an unreadable file."""
    try:
        size = path.stat().st_size
    except OSError:
        return None

    def expect(read: int, lines: int) -> None:
        if read > 0:
            store.expect(max(0, size - read) * lines // read)

    return expect


async def _pipeline(
    jobs: AsyncIterator[_Job],
    counts: ImportCounts,
    progress: Callable[[int], None] | None,
    expect: Callable[[int, int], None] | None = None,
) -> None:
    """One batch sealing on the event loop while the one before commits. When the source of batches fails
    (a worker died, the file became unreadable), the batches it handed over are whole: they commit first.
    `expect(read, lines)`: after each full batch, the bytes read and the lines of the full batches so far."""
    appending: deque[asyncio.Task[AppendResult]] = deque()
    full = 0
    try:
        while True:
            try:
                job = await anext(jobs)
            except StopAsyncIteration:
                break
            except Exception:
                while appending:
                    _tally(await appending.popleft(), counts)
                raise
            counts.unknown += job.unknown
            appending.append(asyncio.create_task(job.append()))
            await asyncio.sleep(0)  # let it start sealing
            while len(appending) >= 2:
                _tally(await appending.popleft(), counts)
            if job.read is not None:
                full += 1
                if expect is not None:
                    expect(job.read, full * BATCH)
                if progress is not None:
                    progress(job.read)
        while appending:
            _tally(await appending.popleft(), counts)
    finally:
        for task in appending:
            task.cancel()


async def _in_process(store: Appender, path: Path, tally: Tally) -> AsyncIterator[_Job]:
    for lines in cut(path, BATCH, tally):
        entries, unknown = await _encode_yielding(lines, now_ms())
        full = len(lines) >= BATCH
        yield _Job(functools.partial(store.append_records, entries), unknown, tally.read if full else None)
        del entries  # the task holds them until sealed, no longer (memory)


async def _from_workers(store: LogStore, pool: WorkerPool) -> AsyncIterator[_Job]:
    async for b in pool.batches():
        yield _Job(functools.partial(store.append_presealed, b.presealed), b.unknown, b.read if b.full else None)
        del b  # the task holds the columns until sealed, no longer (memory)


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


#: Imports running in this process under `_tuned_for_import`, and the settings the first one found (the
#: collector's thresholds, the switch interval).
_tuned: list[tuple[tuple[int, int, int], float]] = []


@contextlib.contextmanager
def _tuned_for_import() -> Iterator[None]:
    """While imports run: the collector's first threshold at least `IMPORT_GC_THRESHOLD` and the interpreter's
    switch interval at most `IMPORT_SWITCH_INTERVAL` (the settings found by the first import are restored when
    the last ends).

    Why the threshold: a batch makes its 4096 row tuples and columns at once (they are not cyclic garbage:
    reference counting frees them), so each batch pushed the count of new containers past the default 700
    several times, and every collection walked the batch's objects (now and then the whole heap, nio's and
    psycopg's modules with it): ~1 us/event of the writer's loop (bench/ingest.py, 10^5, timed with
    `gc.callbacks`). A collection still runs once that many more containers are alive, so cyclic garbage stays
    bounded; an import's batches do not get there.

    Why the switch interval: the writer's threads take turns on the GIL: SQLite's thread after each
    `sqlite3_step` and the frame reader after each read wait until the event loop (sealing, presealing: Python
    that holds the GIL) is asked to drop it, every switch interval (5 ms by default); the commit, the import's
    critical path, waited that long at each turn."""
    found = (gc.get_threshold(), sys.getswitchinterval())
    _tuned.append(found)
    if len(_tuned) == 1:
        if found[0][0] < IMPORT_GC_THRESHOLD:
            gc.set_threshold(IMPORT_GC_THRESHOLD, found[0][1], found[0][2])
        if found[1] > IMPORT_SWITCH_INTERVAL:
            sys.setswitchinterval(IMPORT_SWITCH_INTERVAL)
    try:
        yield
    finally:
        first = _tuned[0]
        _tuned.pop()
        if not _tuned:
            gc.set_threshold(*first[0])
            sys.setswitchinterval(first[1])


def _tally(result: AppendResult, counts: ImportCounts) -> None:
    counts.appended += result.appended
    counts.duplicates += result.duplicates
