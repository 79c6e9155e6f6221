"""The append-only log on SQLite (aiosqlite, WAL, synchronous=FULL).

Theory of operation
-------------------
One writer. `append_events` is the group commit: a batch of events (one sync
batch, 256 import lines) becomes one transaction that inserts the new records,
stores the source's cursor (e.g. Matrix `next_batch`) and the tree frontier, and
maybe signs a checkpoint. The caller acknowledges upstream only after it returns,
so a crash loses nothing (the cursor did not advance) and duplicates nothing
(re-delivered events hit the dedup index and are counted, not stored).

Sequence numbers are gapless and assigned in memory under the writer lock; if
the commit fails (disk full, I/O error) the in-memory state is rolled back with
the transaction, so the next attempt reuses the same numbers.

The layout (schema, creation, key unwrapping, tags) is in `schema.py`.
Tables: `meta` (log id, public key, KEK check, frontier), `keys` (data keys
wrapped by the KEK), `records` (seq, dedup tag, header, commitment, ciphertext,
leaf hash), `checkpoints` (signed notes), `cursors`, `counters`. Triggers forbid
UPDATE and DELETE on records and checkpoints: not a security boundary (whoever
owns the file can drop them) but it stops accidents; `verify` is the boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import aiosqlite

from bridge.blobs import MediaKeys
from bridge.errors import LogIntegrityError, StorageError, UsageError
from bridge.events import Event, canonical_bytes
from bridge.log import checkpoint, crypto, format, merkle
from bridge.log.keys import KeyMaterial
from bridge.log.lock import WriterLock
from bridge.log.schema import (
    DATA_PURPOSE,
    SCHEMA_VERSION,
    check_key_matches,
    conversation_tag,
    cursor_mac,
    db_path,
    dedup_tag,
    frontier_bytes,
    frontier_from_bytes,
    now_ms,
    unwrap_keys,
)
from bridge.log.schema import initialise as initialise  # re-export: the writer's API creates logs too

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """Sign a checkpoint after `every_records` new records or `every_seconds`."""

    every_records: int = 10_000
    every_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class AppendResult:
    appended: int
    duplicates: int
    #: Sequence numbers of the appended records, in input order (duplicates skipped).
    seqs: tuple[int, ...]


class LogStore:
    """The writer. Use as `async with await LogStore.open(dir, keys) as store:`."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        keys: KeyMaterial,
        index_key: bytes,
        data_keys: dict[int, bytes],
        current_key: int,
        frontier: merkle.Frontier,
        prev_leaf: bytes,
        last_checkpoint: tuple[int, int],  # (tree size, ms); size -1 when none yet
        policy: CheckpointPolicy,
    ) -> None:
        self._conn = conn
        self._keys = keys
        self._index_key = index_key
        self._data_keys = data_keys
        self._current_key = current_key
        self._sealers = {k: crypto.Sealer(v) for k, v in data_keys.items()}
        # The head: what is sealed, including batches still committing.
        self._frontier = frontier
        self._prev_leaf = prev_leaf
        # What is durable: the head falls back to this when a commit fails.
        self._committed = (frontier.copy(), prev_leaf)
        self._last_cp_size, self._last_cp_ms = last_checkpoint
        self._policy = policy
        self._seal_lock = asyncio.Lock()
        self._tail: asyncio.Future[None] | None = None
        self._inflight: set[bytes] = set()
        self._conv_tags: dict[tuple[str, str], bytes] = {}
        self._lock: WriterLock | None = None

    # -- opening -----------------------------------------------------------------

    @classmethod
    async def open(cls, data_dir: Path, keys: KeyMaterial, policy: CheckpointPolicy | None = None) -> LogStore:
        path = db_path(data_dir)
        if not path.exists():
            raise UsageError(f"no log in {data_dir}; create one with `chatarchief init`")
        try:
            lock = WriterLock.acquire(data_dir)  # one writer: raises WriterBusy naming the holder's PID
        except OSError as exc:
            raise StorageError(f"cannot take the writer lock in {data_dir}: {exc.strerror}") from None
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            lock.release()
            raise StorageError(f"cannot open the log {path}: {exc}") from None
        try:
            # WAL mode creates -wal and -shm beside the database: a full disk fails here.
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=FULL")
            store = await cls._load(conn, keys, policy or CheckpointPolicy())
        except sqlite3.Error as exc:
            await conn.close()
            lock.release()
            raise StorageError(f"cannot open the log {path} (disk full or unwritable?): {exc}") from None
        except BaseException:
            await conn.close()
            lock.release()
            raise
        store._lock = lock
        return store

    @classmethod
    async def _load(cls, conn: aiosqlite.Connection, keys: KeyMaterial, policy: CheckpointPolicy) -> LogStore:
        meta = {k: bytes(v) async for k, v in await conn.execute("SELECT k, v FROM meta")}
        if meta.get("schema_version") != str(SCHEMA_VERSION).encode():
            raise StorageError(f"unsupported log schema {meta.get('schema_version')!r}")
        check_key_matches(meta, keys)
        rows = [
            (int(r[0]), str(r[1]), bytes(r[2]))
            async for r in await conn.execute("SELECT key_id, purpose, wrapped FROM keys ORDER BY key_id")
        ]
        try:
            index_key, data_keys = unwrap_keys(rows, keys)
        except crypto.AuthError as exc:
            raise StorageError(f"the data keys in the log do not unwrap: {exc}; run `chatarchief verify`") from None
        current = int(meta["current_data_key"])
        frontier, prev = await cls._load_frontier(conn, meta)
        async with conn.execute("SELECT size, created_ms FROM checkpoints ORDER BY size DESC LIMIT 1") as cur:
            row = await cur.fetchone()
        # No checkpoint yet: count the interval from now, and seal the empty tree on demand.
        last_cp = (int(row[0]), int(row[1])) if row else (-1, now_ms())
        return cls(conn, keys, index_key, data_keys, current, frontier, prev, last_cp, policy)

    @staticmethod
    async def _load_frontier(conn: aiosqlite.Connection, meta: dict[str, bytes]) -> tuple[merkle.Frontier, bytes]:
        async with conn.execute("SELECT seq, leaf FROM records ORDER BY seq DESC LIMIT 1") as cur:
            row = await cur.fetchone()
        size = int(row[0]) + 1 if row else 0
        prev = bytes(row[1]) if row else format.GENESIS_PREV
        saved = meta.get("frontier")
        if saved is not None:
            frontier = frontier_from_bytes(saved)
            if frontier.size == size:
                return frontier, prev
        # The frontier is written in the same transaction as the records, so this
        # only runs on a log from before that or one damaged by hand: rebuild.
        frontier = merkle.Frontier()
        async with conn.execute("SELECT leaf FROM records ORDER BY seq") as cur:
            async for (leaf,) in cur:
                frontier.append(bytes(leaf))
        return frontier, prev

    async def close(self) -> None:
        try:
            await self._conn.close()
        finally:
            if self._lock is not None:
                self._lock.release()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- reading -----------------------------------------------------------------

    @property
    def size(self) -> int:
        """Records durable in the log."""
        return self._committed[0].size

    @property
    def keys(self) -> KeyMaterial:
        return self._keys

    def media_keys(self) -> MediaKeys:
        """Key material for the blob store of this log (current data key encrypts new media)."""
        return MediaKeys(self._keys.log_id, self._index_key, dict(self._data_keys), self._current_key)

    async def get_cursor(self, name: str) -> str | None:
        """The source's stored cursor; refuses one whose MAC does not match (resuming could skip events)."""
        async with self._conn.execute("SELECT value, mac FROM cursors WHERE name = ?", (name,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        value = str(row[0])
        if not crypto.hmac_equal(bytes(row[1]), cursor_mac(self._index_key, name, value)):
            raise LogIntegrityError(
                None, f"the stored cursor of {name} was altered; refusing to resume from it (run verify)"
            )
        return value

    async def counter(self, name: str) -> int:
        async with self._conn.execute("SELECT value FROM counters WHERE name = ?", (name,)) as cur:
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    async def latest_checkpoint(self) -> str | None:
        async with self._conn.execute("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1") as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def contains(self, source: str, conversation: str, event_id: str) -> bool:
        tag = dedup_tag(self._index_key, source, conversation, event_id)
        async with self._conn.execute("SELECT 1 FROM records WHERE dedup = ?", (tag,)) as cur:
            return await cur.fetchone() is not None

    # -- writing -----------------------------------------------------------------
    #
    # Appends are pipelined: a batch is checked against the dedup index and sealed
    # (sequence numbers, encryption, hash chain, frontier) under `_seal_lock`, then
    # committed in seal order, each commit waiting for the one before. So the next
    # batch can be sealed on the event loop while SQLite fsyncs the previous one on
    # aiosqlite's thread. If a commit fails, it and every batch sealed after it
    # fail, and the head falls back to the last durable state.

    async def append_events(self, events: Sequence[Event], cursor: tuple[str, str] | None = None) -> AppendResult:
        """Group commit: append new events and store `cursor` in one transaction.

        Returns after the transaction is durable (fsync'd WAL). Events already in
        the log, or repeated within the batch, are counted as duplicates. Raises
        StorageError if the batch could not be made durable (nothing of it is).
        """
        entries = [(format.RecordType.EVENT, e.source, e.conversation, e.event_id, canonical_bytes(e)) for e in events]
        return await self.append_records(entries, cursor)

    async def append_records(
        self,
        entries: Sequence[tuple[format.RecordType, str, str, str, bytes]],
        cursor: tuple[str, str] | None = None,
    ) -> AppendResult:
        """Append (type, source, conversation, id, payload) entries; see `append_events`."""
        async with self._seal_lock:
            batch = await self._prepare(entries, cursor)
            previous, self._tail = self._tail, asyncio.get_running_loop().create_future()
            done = self._tail
        try:
            if previous is not None:
                await asyncio.shield(previous)
            sealed = await self._commit(batch)
        except BaseException as exc:
            self._frontier, self._prev_leaf = self._committed[0].copy(), self._committed[1]
            if self._tail is done:  # nothing sealed after us: the next batch starts afresh
                self._tail = None
            done.set_exception(StorageError(f"an earlier batch failed to commit: {exc}"))
            done.exception()  # retrieved: later batches see it through `previous`
            raise
        else:
            self._committed = (batch.frontier, batch.prev_leaf)
            if sealed is not None:
                self._last_cp_size, self._last_cp_ms = sealed
            done.set_result(None)
        finally:
            self._inflight.difference_update(batch.tags)
        return AppendResult(len(batch.rows), batch.duplicates, tuple(r[0] for r in batch.rows))

    async def _prepare(
        self,
        entries: Sequence[tuple[format.RecordType, str, str, str, bytes]],
        cursor: tuple[str, str] | None,
    ) -> _Batch:
        tags = [dedup_tag(self._index_key, s, c, i) for _, s, c, i, _ in entries]
        existing = await self._existing(tags)
        existing |= self._inflight
        rows: list[_Row] = []
        fresh: set[bytes] = set()
        appended_ms = now_ms()
        width = crypto.NONCE_BYTES + crypto.SALT_BYTES
        randomness = os.urandom(width * len(entries))  # one syscall per batch, fresh bytes per record
        for n, ((rtype, source, conv, _, payload), tag) in enumerate(zip(entries, tags, strict=True)):
            if tag in existing or tag in fresh:
                continue
            fresh.add(tag)
            rows.append(
                self._seal(rtype, source, conv, payload, tag, appended_ms, randomness[n * width : (n + 1) * width])
            )
        self._inflight |= fresh
        return _Batch(rows, len(entries) - len(rows), cursor, self._frontier.copy(), self._prev_leaf, fresh)

    async def _existing(self, tags: list[bytes]) -> set[bytes]:
        found: set[bytes] = set()
        for i in range(0, len(tags), 500):
            chunk = tags[i : i + 500]
            sql = f"SELECT dedup FROM records WHERE dedup IN ({','.join('?' * len(chunk))})"  # noqa: S608
            async with self._conn.execute(sql, chunk) as cur:
                found.update(bytes(r[0]) for r in await cur.fetchall())
        return found

    def _conversation_tag(self, source: str, conv: str) -> bytes:
        tag = self._conv_tags.get((source, conv))
        if tag is None:
            if len(self._conv_tags) > 100_000:
                self._conv_tags.clear()
            tag = self._conv_tags[(source, conv)] = conversation_tag(self._index_key, source, conv)
        return tag

    def _seal(
        self,
        rtype: format.RecordType,
        source: str,
        conv: str,
        payload: bytes,
        tag: bytes,
        appended_ms: int,
        randomness: bytes,
    ) -> _Row:
        seq = self._frontier.size
        nonce, salt = randomness[: crypto.NONCE_BYTES], randomness[crypto.NONCE_BYTES :]
        header = format.RecordHeader(
            version=format.FORMAT_VERSION,
            type=rtype,
            seq=seq,
            appended_ms=appended_ms,
            key_id=self._current_key,
            conversation_tag=self._conversation_tag(source, conv),
            nonce=nonce,
            prev_leaf=self._prev_leaf,
        ).pack()
        plaintext = salt + payload
        commit = format.commitment(plaintext)
        ad = format.associated_data(self._keys.log_id, header, commit)
        body = self._sealers[self._current_key].seal(nonce, plaintext, ad)
        leaf = format.leaf_of(header, commit, body)
        self._frontier.append(leaf)
        self._prev_leaf = leaf
        return (seq, tag, header, commit, body, leaf)

    async def _commit(self, batch: _Batch) -> tuple[int, int] | None:
        """Write the batch in one transaction; returns the checkpoint it signed, if any."""
        return await self._transaction(lambda: self._write(batch))

    async def _write(self, batch: _Batch) -> tuple[int, int] | None:
        conn = self._conn
        if batch.rows:
            await conn.executemany(
                "INSERT INTO records (seq, dedup, header, commitment, body, leaf) VALUES (?, ?, ?, ?, ?, ?)",
                batch.rows,
            )
            await conn.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES ('frontier', ?)", (frontier_bytes(batch.frontier),)
            )
        if batch.duplicates:
            await conn.execute(
                "INSERT INTO counters (name, value) VALUES ('duplicates', ?)"
                " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (batch.duplicates,),
            )
        if batch.cursor is not None:
            await conn.execute(
                "INSERT OR REPLACE INTO cursors (name, value, updated_ms, mac) VALUES (?, ?, ?, ?)",
                (batch.cursor[0], batch.cursor[1], now_ms(), cursor_mac(self._index_key, *batch.cursor)),
            )
        if self._checkpoint_due(batch.frontier.size):
            return await self._insert_checkpoint(batch.frontier)
        return None

    def _checkpoint_due(self, size: int) -> bool:
        pending = size - max(self._last_cp_size, 0)
        if pending <= 0:
            return False
        if pending >= self._policy.every_records:
            return True
        return (now_ms() - self._last_cp_ms) >= self._policy.every_seconds * 1000

    async def _insert_checkpoint(self, frontier: merkle.Frontier) -> tuple[int, int]:
        """Sign and insert a checkpoint (inside the caller's transaction): (size, created ms)."""
        created = now_ms()
        name = self._keys.key_name
        cp = checkpoint.Checkpoint(origin=name, size=frontier.size, root=frontier.root(), timestamp_ms=created)
        note = checkpoint.sign_checkpoint(cp, name, self._keys.signing_key)
        await self._conn.execute(
            "INSERT INTO checkpoints (size, created_ms, note) VALUES (?, ?, ?)", (cp.size, created, note)
        )
        return (cp.size, created)

    async def _quiesce(self) -> None:
        """Wait (holding the seal lock) until every sealed batch has settled."""
        if self._tail is not None:
            with contextlib.suppress(StorageError):
                await asyncio.shield(self._tail)

    async def checkpoint(self) -> str:
        """Sign a checkpoint of the durable tree now (if it grew); returns the latest note."""
        async with self._seal_lock:
            await self._quiesce()
            if self.size != self._last_cp_size:
                sealed = await self._transaction(lambda: self._insert_checkpoint(self._committed[0]))
                self._last_cp_size, self._last_cp_ms = sealed
            note = await self.latest_checkpoint()
            assert note is not None
            return note

    async def rotate_data_key(self) -> int:
        """Add a new data key and make it current; old keys stay for reading."""
        async with self._seal_lock:
            await self._quiesce()
            new_id = max(self._data_keys) + 1
            key = crypto.random_key()
            wrapped = crypto.wrap_key(self._keys.kek, self._keys.log_id, new_id, DATA_PURPOSE, key)

            async def write() -> None:
                await self._conn.execute(
                    "INSERT INTO keys (key_id, purpose, created_ms, wrapped) VALUES (?, ?, ?, ?)",
                    (new_id, DATA_PURPOSE, now_ms(), wrapped),
                )
                await self._conn.execute("UPDATE meta SET v = ? WHERE k = 'current_data_key'", (str(new_id).encode(),))

            await self._transaction(write)
            self._data_keys[new_id] = key
            self._sealers[new_id] = crypto.Sealer(key)
            self._current_key = new_id
            return new_id

    async def _transaction(self, body: Callable[[], Awaitable[T]]) -> T:
        try:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = await body()
                await self._conn.execute("COMMIT")
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StorageError(f"could not write to the log: {exc}") from exc
        return result


_Row = tuple[int, bytes, bytes, bytes, bytes, bytes]


@dataclass(frozen=True, slots=True)
class _Batch:
    """A sealed batch waiting for its commit."""

    rows: list[_Row]
    duplicates: int
    cursor: tuple[str, str] | None
    frontier: merkle.Frontier
    prev_leaf: bytes
    tags: set[bytes]
