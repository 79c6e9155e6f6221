"""Dedup lookups on their own read connection and thread (the writer's helper; no writes).

Why: the writer's aiosqlite connection has one thread, so a lookup queued there
waits for the previous batch's commit (insert + fsync) to finish, and sealing
the next batch can never overlap a commit. This reader runs on its own
connection (WAL: readers do not block the writer, nor it them) and its own
thread, so the lookup runs while the commit does, and sqlite releases the GIL
for both.

Contract: `existing(tags)` returns the tags among `tags` that a committed
record holds. A batch committing while the lookup runs may or may not be seen;
the writer covers that window with its set of tags in flight (see
`LogStore._prepare`). The connection is `query_only`: it cannot write.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from bridge.errors import StorageError

T = TypeVar("T")

#: Tags per `IN (...)` query (SQLite's variable limit is 32766 since 3.32; smaller keeps each statement cheap).
CHUNK = 1000


class DedupReader:
    """`async with await DedupReader.open(path) as r: found = await r.existing(tags)`."""

    def __init__(self, pool: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        self._pool = pool
        self._conn = conn

    @classmethod
    async def open(cls, path: Path) -> DedupReader:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatarchief-dedup")
        try:
            conn = await _run(pool, lambda: _connect(path))
        except BaseException:
            pool.shutdown(wait=False)
            raise
        return cls(pool, conn)

    async def existing(self, tags: Sequence[bytes]) -> set[bytes]:
        if not tags:
            return set()
        return await _run(self._pool, lambda: _lookup(self._conn, tags))

    async def close(self) -> None:
        try:
            await _run(self._pool, self._conn.close)
        finally:
            self._pool.shutdown(wait=True)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only=ON")
    return conn


def _lookup(conn: sqlite3.Connection, tags: Sequence[bytes]) -> set[bytes]:
    found: set[bytes] = set()
    ordered = sorted(set(tags))  # probes in index order: neighbouring pages stay cached
    for i in range(0, len(ordered), CHUNK):
        chunk = ordered[i : i + CHUNK]
        sql = f"SELECT dedup FROM records WHERE dedup IN ({','.join('?' * len(chunk))})"  # noqa: S608
        found.update(bytes(r[0]) for r in conn.execute(sql, chunk))
    return found


async def _run(pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)
    except sqlite3.Error as exc:
        raise StorageError(f"could not read the log's dedup index: {exc}") from exc
