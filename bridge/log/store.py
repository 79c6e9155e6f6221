"""The append-only log on SQLite (aiosqlite, WAL, synchronous=FULL) or PostgreSQL (psycopg, `bridge.log.db`).

Theory of operation
-------------------
One writer. `append_events` is the group commit: a batch of events (one sync
batch, 256 import lines) becomes one transaction that inserts the new records,
stores the source's cursor (e.g. Matrix `next_batch`), and maybe signs a
checkpoint (whose row keeps the tree frontier at its size: the only place a
frontier is stored; the tail after it is re-authenticated at open). The caller
acknowledges upstream only after it returns, so a crash loses nothing (the
cursor did not advance) and duplicates nothing (re-delivered events hit the
dedup index and are counted, not stored).

Sequence numbers are gapless and assigned in memory under the writer lock; if
the commit fails (disk full, I/O error) the in-memory state is rolled back with
the transaction, so the next attempt reuses the same numbers.

The layout (schema, creation, key unwrapping, tags) is in `schema.py`.
Tables: `meta` (schema version, log id, public key, KEK check), `keys` (data keys
wrapped by the KEK; the current one is the newest data KEY record, no pointer),
`records` (seq, dedup tag, header, commitment, ciphertext, leaf hash),
`checkpoints` (signed notes and the frontier at their size), `cursors`,
`counters`. Triggers forbid UPDATE and DELETE on records and checkpoints: not a security boundary (whoever
owns the file can drop them) but it stops accidents; `verify` is the boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import aiosqlite
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bridge.blobs import MediaKeys
from bridge.clock import now_ms
from bridge.errors import Check, KeyFileError, LogIntegrityError, StorageError, UsageError
from bridge.events import EncodingError, Event, EventId, canonical_bytes, canonical_json, event_from_bytes
from bridge.log import audit, checkpoint, crypto, db, format, merkle, migrations, rotation
from bridge.log.clear import BLOB_SOURCE, BlobRecord, KeyRecord
from bridge.log.dedup import DedupReader, TagFilter, epochs_sql
from bridge.log.format import Presealed
from bridge.log.keys import KeyMaterial
from bridge.log.lock import WriterLock
from bridge.log.rotation import KeyChain
from bridge.log.schema import (
    DATA_PURPOSE,
    SCHEMA_VERSION,
    check_key_matches,
    checkpoint_row,
    conversation_tag,
    cursor_mac,
    dedup_tag,
    epoch_of,
    frontier_from_bytes,
    key_record,
    key_row,
    meta_dict,
    open_cursor,
    seal_cursor,
    seal_key_record,
    unwrap_keys,
)
from bridge.log.schema import initialise as initialise  # re-export: the writer's API creates logs too

T = TypeVar("T")
log = logging.getLogger(__name__)
#: The writer connection's page cache (KiB): the current epoch of the dedup index (~3 MB) and the tree's
#: right edge stay in it (SQLite's default is 2 MB).
WRITER_CACHE_KIB = 32768
#: Tags added to the dedup filter between two yields to the loop while it loads (~10 ms).
FILTER_SLICE = 8192
#: What `append_records` takes: (type, source, conversation, id, payload); (source, conversation, id) is the
#: idempotency key.
Entry = tuple[format.RecordType, str, str, str, bytes]


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
        conn: db.Writer,
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
        self._sealers = crypto.sealers(data_keys)
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
        self._dedup: DedupReader | db.PgDedup | None = None
        #: Every tag the log holds, and every tag sealed since open (a Bloom filter: see `bridge.log.dedup`).
        self._filter = TagFilter()
        #: True once the filter holds every tag the log held at open (loaded in the background, see
        #: `_fill_filter`); until then every tag is probed in every epoch.
        self._filter_loaded = False
        self._filter_task: asyncio.Task[None] | None = None
        self._blob_root: Path | None = None
        self._blobs_seen: set[str] = set()
        #: Called (on the loop, must not block) after a transaction that signed a checkpoint has committed:
        #: how `run` wakes the witness client at once (docs/witness.md). Never awaited by the sealing path.
        self.on_checkpoint: Callable[[], None] | None = None
        self._signed_in_transaction = False
        #: The log's signing keys from the pinned one through its rotation records (`bridge.log.rotation`).
        self._chain = rotation.KeyChain((keys.key_name, keys.public_key))

    # -- opening -----------------------------------------------------------------

    @classmethod
    async def open(cls, data_dir: Path, keys: KeyMaterial, policy: CheckpointPolicy | None = None) -> LogStore:
        where = db.locate(data_dir)  # UsageError when the data dir holds no log
        try:
            lock = WriterLock.acquire(data_dir)  # one writer per data dir: raises WriterBusy naming the holder's PID
        except OSError as exc:
            raise StorageError(f"cannot take the writer lock in {data_dir}: {exc.strerror}") from None
        try:
            if isinstance(where, db.PgTarget):
                store = await cls._open_pg(where, data_dir, keys, policy or CheckpointPolicy())
            else:
                store = await cls._open_sqlite(where, data_dir, keys, policy or CheckpointPolicy())
        except BaseException:
            lock.release()
            raise
        store._lock = lock
        return store

    @classmethod
    async def _open_sqlite(cls, path: Path, data_dir: Path, keys: KeyMaterial, policy: CheckpointPolicy) -> LogStore:
        try:
            conn = db.SqliteWriter(await aiosqlite.connect(path, isolation_level=None))
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the log {path}: {exc}") from None
        try:
            # WAL mode creates -wal and -shm beside the database: a full disk fails here.
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
            await cls._migrate(conn, data_dir)
            store = await cls._load(conn, data_dir, keys, policy)
            store._dedup = await DedupReader.open(path)
            await store._load_filter()
        except sqlite3.Error as exc:
            await conn.close()
            raise StorageError(f"cannot open the log {path} (disk full or unwritable?): {exc}") from None
        except BaseException:
            await conn.close()
            raise
        return store

    @classmethod
    async def _open_pg(
        cls, target: db.PgTarget, data_dir: Path, keys: KeyMaterial, policy: CheckpointPolicy
    ) -> LogStore:
        """The writer's session takes the log's advisory lock itself: its writes and its lock live and die
        together (a writer whose session is gone can write nothing, and a standby may take over)."""
        conn = await db.PgWriter.connect(target)
        try:
            await conn.take_lock(data_dir)  # PgWriterBusy naming the holding session
            await cls._migrate(conn, data_dir)
            store = await cls._load(conn, data_dir, keys, policy)
            store._dedup = await db.PgDedup.open(target)
            await store._load_filter()
            restored = await store._dedup.restore_blobs(data_dir / "blobs")  # media a standby has not got yet
            if restored:
                log.info("media blobs restored from the log's database", extra={"blobs": restored})
        except psycopg.Error as exc:
            await conn.close()
            raise StorageError(f"cannot open the log at {target.describe()}: {exc}") from None
        except BaseException:
            await conn.close()
            raise
        return store

    @staticmethod
    async def _migrate(conn: db.Writer, data_dir: Path) -> None:
        """Bring an older layout up to this version's, under the writer lock, in one transaction."""
        steps = await migrations.migrate(conn)
        if steps:
            log.warning(
                "log layout migrated", extra={"data_dir": str(data_dir), "from": steps[0], "to": SCHEMA_VERSION}
            )

    async def _load_filter(self) -> None:
        """Start loading every tag the log holds into the filter, in the background: the writer is usable at
        once (until the load ends, `_existing` probes every tag in every epoch: correct, slower)."""
        self._filter = TagFilter(capacity=max(2 * self._frontier.size, TagFilter.MIN_CAPACITY))
        self._filter_loaded = False
        self._filter_task = asyncio.create_task(self._fill_filter(epoch_of(self._frontier.size)))

    async def _fill_filter(self, last_epoch: int) -> None:
        """One epoch of the index at a time (a range of the index: no cursor held open), each added on the
        loop in slices (the filter is not shared with a thread; the loop stays responsive). Tags sealed
        meanwhile go in through `_prepare`, so after the last epoch the filter holds every tag of the log."""
        assert self._dedup is not None
        try:
            for epoch in range(last_epoch + 1):
                tags = await self._dedup.epoch_tags(epoch)
                for start in range(0, len(tags), FILTER_SLICE):
                    self._filter.update(tags[start : start + FILTER_SLICE])
                    await asyncio.sleep(0)
        except StorageError as exc:  # the writer stays correct without the filter, only slower
            log.error("ALERT the dedup filter could not be loaded; every lookup probes the whole index", extra={
                "error": str(exc)})  # fmt: skip
            return
        self._filter_loaded = True

    @classmethod
    async def _load(cls, conn: db.Writer, data_dir: Path, keys: KeyMaterial, policy: CheckpointPolicy) -> LogStore:
        meta = meta_dict([tuple(r) async for r in await conn.execute("SELECT k, v FROM meta")])
        if meta.get("schema_version") != str(SCHEMA_VERSION).encode():
            raise StorageError(
                f"unsupported log schema {meta.get('schema_version')!r} (this version writes {SCHEMA_VERSION});"
                " a log from an earlier development version must be re-created and re-imported"
            )
        rows = [
            (r[0], r[1], r[2], r[3])
            async for r in await conn.execute("SELECT key_id, purpose, wrapped, seq FROM keys ORDER BY key_id")
        ]
        if not all(type(k) is int and type(p) is str and type(w) is bytes and type(s) is int for k, p, w, s in rows):
            raise LogIntegrityError(
                None, "the key table was altered: a row's values have the wrong types", check=Check.KEY_TABLE
            )
        check_key_matches(meta, keys, [r[:3] for r in rows])
        try:
            index_key, data_keys = unwrap_keys([r[:3] for r in rows], keys)
        except crypto.AuthError as exc:
            raise LogIntegrityError(
                None, f"the key table was altered: {exc}; run `chatarchief verify`", check=Check.KEY_TABLE
            ) from None
        secrets = audit.Secrets(keys.log_id, index_key, data_keys)
        key_seqs = {r[3]: r[0] for r in rows}
        await cls._check_key_records(conn, key_seqs, rows)
        chain = await key_chain(conn, keys)
        frontier, prev, last_cp = await cls._authenticate_tail(conn, chain, secrets, key_seqs)
        current = max(data_keys)  # the newest data key (KEY records are under the proof; no mutable pointer)
        store = cls(conn, keys, index_key, data_keys, current, frontier, prev, last_cp, policy)
        store._chain = chain
        store._blob_root = data_dir / "blobs"
        return store

    @staticmethod
    async def _check_key_records(
        conn: db.Writer, key_seqs: dict[int, int], rows: list[tuple[int, str, bytes, int]]
    ) -> None:
        """Each row of the key table must be the KEY record it names (the records are the evidence)."""
        for key_id, purpose, wrapped, seq in rows:
            async with conn.execute("SELECT header, commitment, body FROM records WHERE seq = ?", (seq,)) as cur:
                row = await cur.fetchone()
            if row is None:
                raise LogIntegrityError(
                    seq, f"the key table names record {seq} for key {key_id}, which is missing", check=Check.KEY_TABLE
                )
            try:
                header = format.unpack_header(bytes(row[0]))
            except format.FormatError as exc:
                raise LogIntegrityError(seq, f"header does not parse: {exc}", check=Check.HEADER) from None
            if header.type != format.RecordType.KEY:
                raise LogIntegrityError(
                    seq,
                    f"the key table names record {seq} for key {key_id}: not a key record",
                    format.RecordType.KEY.name,
                    header.type.name,
                    check=Check.KEY_TABLE,
                )
            rec = audit.open_clear_record(seq, header, bytes(row[1]), bytes(row[2]))
            if not isinstance(rec, KeyRecord) or rec != KeyRecord(key_id, purpose, rec.created_ms, wrapped):
                raise LogIntegrityError(
                    seq, f"key {key_id} in the key table differs from its key record", check=Check.KEY_TABLE
                )

    @staticmethod
    async def _authenticate_tail(
        conn: db.Writer, chain: KeyChain, secrets: audit.Secrets, key_seqs: dict[int, int]
    ) -> tuple[merkle.Frontier, bytes, tuple[int, int]]:
        """Authenticate everything after the last signed checkpoint before this process signs anything.

        The frontier comes from the newest checkpoint whose stored frontier gives
        its signed root (a stored frontier is never trusted beyond that); every
        later record is recomputed from its bytes, chained, decrypted and checked
        (AEAD, commitment, tags) and its leaf appended. Any failure raises
        LogIntegrityError naming the first bad record: nothing gets signed.
        """
        frontier, last_cp = await _signed_frontier(conn, chain)
        prev = await _leaf_before(conn, frontier.size)
        async with conn.execute(
            "SELECT seq, dedup, header, commitment, body, leaf FROM records WHERE seq >= ? ORDER BY seq",
            (frontier.size,),
        ) as cur:
            while batch := await cur.fetchmany(1024):
                for seq, dedup, header_b, commit, body, stored in batch:
                    audit.check_position(frontier.size, seq)
                    header_b, commit, body, stored, dedup = audit.blobs_of(seq, header_b, commit, body, stored, dedup)
                    header, leaf = audit.check_stored(seq, header_b, commit, body, stored, prev)
                    opened = audit.check_plaintext(seq, secrets, header, header_b, commit, body, dedup)
                    if isinstance(opened, KeyRecord) and key_seqs.get(seq) != opened.key_id:
                        raise LogIntegrityError(
                            seq,
                            f"key record {opened.key_id} is not in the key table",
                            opened.key_id,
                            key_seqs.get(seq),
                            check=Check.KEY_TABLE,
                        )
                    frontier.append(leaf)
                    prev = leaf
        return frontier, prev, last_cp

    async def close(self) -> None:
        try:
            try:
                if self._filter_task is not None:
                    self._filter_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._filter_task
                if self._dedup is not None:
                    await self._dedup.close()
            finally:
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

    def expect(self, more: int) -> None:
        """About `more` records are still to come (an import's estimate from the bytes it has left to read): a
        hint for the growth of the dedup filter (`TagFilter.expect`: fewer parts to probe per tag). Nothing
        else changes; a wrong hint costs memory or speed, never a duplicate."""
        self._filter.expect(more)

    def tagging_key(self) -> bytes:
        """The index key, for an import worker that computes dedup and conversation tags (`Presealed`); it
        crosses to the worker only through a pipe."""
        return self._index_key

    async def get_cursor(self, name: str) -> str | None:
        """The source's stored cursor; refuses one whose MAC does not match (resuming could skip events)."""
        async with self._conn.execute("SELECT value, mac FROM cursors WHERE name = ?", (name,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        try:
            value = open_cursor(self._index_key, name, row[0])
        except crypto.AuthError:
            value = None
        if value is None or not crypto.hmac_equal(bytes(row[1]), cursor_mac(self._index_key, name, value)):
            raise LogIntegrityError(
                None,
                f"the stored cursor of {name} was altered; refusing to resume from it (run verify)",
                check=Check.CURSOR,
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
        sql = f"SELECT 1 FROM records WHERE {epochs_sql(epoch_of(self._frontier.size))} AND dedup = ?"  # noqa: S608
        async with self._conn.execute(sql, (tag,)) as cur:
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
        entries: list[Entry] = []
        for e in events:
            for att in e.attachments:
                if att.status == "stored" and isinstance(att.blob_id, str) and att.blob_id not in self._blobs_seen:
                    blob = await self._blob_entry(att.blob_id)
                    if blob is not None:
                        entries.append(blob)
            entries.append((format.RecordType.EVENT, e.source, e.conversation, e.event_id, canonical_bytes(e)))
        return await self.append_records(entries, cursor)

    async def _blob_entry(self, blob_id: str) -> Entry | None:
        """The BLOB record of a stored media file (id, SHA-256 and size of the encrypted file), appended
        before the first event that references it, so keyless `verify` checks the file (dedup keeps it once)."""
        if self._blob_root is None:
            return None
        path = self._blob_root / blob_id[:2] / blob_id
        try:
            if isinstance(self._dedup, db.PgDedup):  # PostgreSQL: the file's bytes go to the database too
                raw = await asyncio.to_thread(path.read_bytes)
                await self._dedup.keep_blob(blob_id, raw)
                digest, size = hashlib.sha256(raw).hexdigest(), len(raw)
                del raw
            else:
                digest, size = await asyncio.to_thread(_file_digest, path)
        except (OSError, ValueError) as exc:
            log.error(
                "ALERT media blob missing when its event is committed; verify and snapshot will report it",
                extra={"blob_id": blob_id, "error": type(exc).__name__},
            )
            return None
        if len(self._blobs_seen) > 100_000:
            self._blobs_seen.clear()
        self._blobs_seen.add(blob_id)
        return (format.RecordType.BLOB, BLOB_SOURCE, "", blob_id, BlobRecord(blob_id, digest, size).encode())

    async def append_records(
        self,
        entries: Sequence[Entry],
        cursor: tuple[str, str] | None = None,
    ) -> AppendResult:
        """Append (type, source, conversation, id, payload) entries; see `append_events`."""
        async with self._seal_lock:
            batch = await self._prepare(entries, cursor)
            del entries  # sealed: the payloads are not needed while the batch waits for its commit (memory)
            previous, self._tail = self._tail, asyncio.get_running_loop().create_future()
            done = self._tail
        return await self._settle(batch, previous, done)

    async def append_presealed(self, presealed: Presealed) -> AppendResult:
        """`append_records` for a batch whose tags and compressed plaintexts are already computed: the same
        dedup decision, conflicting versions, sealing (header, AES-GCM, leaf) and commit, the same records."""
        async with self._seal_lock:
            # The batch before is the one whose frontier this batch's sealing starts from: taken before the
            # sealing, which yields between slices. If that batch fails to commit meanwhile (the frontier reset
            # to the committed one and the tail cleared), this batch, chained to its leaves, fails with it.
            previous = self._tail
            batch = await self._prepare_presealed(presealed)
            del presealed
            self._tail = asyncio.get_running_loop().create_future()
            done = self._tail
        return await self._settle(batch, previous, done)

    async def _settle(
        self, batch: _Batch, previous: asyncio.Future[None] | None, done: asyncio.Future[None]
    ) -> AppendResult:
        """Commit a sealed batch after the one sealed before it (see the writing section's comment)."""
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
        entries: Sequence[Entry],
        cursor: tuple[str, str] | None,
    ) -> _Batch:
        tags = [dedup_tag(self._index_key, s, c, i) for _, s, c, i, _ in entries]
        # Tags of batches in flight now: one that commits while the lookup below runs (on its own connection)
        # has left `_inflight` by the time it returns, though the lookup's read may predate its commit.
        pending = set(self._inflight)
        in_log = await self._existing(tags)
        entries, tags = await self._versions(entries, tags, in_log)
        existing = in_log | pending | self._inflight
        rows, fresh = self._seal_all(entries, tags, existing, now_ms())
        self._inflight |= fresh
        self._filter.update(fresh)  # before the commit: a tag may be in the filter and not the log, never the reverse
        return _Batch(rows, len(entries) - len(rows), cursor, self._frontier.copy(), self._prev_leaf, fresh)

    async def _prepare_presealed(self, presealed: Presealed) -> _Batch:
        """`_prepare` for a `Presealed` batch (its tags are given)."""
        pending = set(self._inflight)
        in_log = await self._existing(presealed.tags)
        if in_log:
            presealed = await self._presealed_versions(presealed, in_log)
        existing = in_log | pending | self._inflight
        rows, fresh = await self._seal_presealed(presealed, existing, now_ms())
        self._inflight |= fresh
        self._filter.update(fresh)  # as in `_prepare`
        return _Batch(rows, len(presealed.tags) - len(rows), None, self._frontier.copy(), self._prev_leaf, fresh)

    async def _presealed_versions(self, presealed: Presealed, in_log: set[bytes]) -> Presealed:
        """`_versions` for the entries of a `Presealed` batch the log already holds (their payloads opened
        from the prepared plaintext); a conflicting version is prepared here, with a fresh salt."""
        held = [n for n, tag in enumerate(presealed.tags) if tag in in_log]
        entries: list[Entry] = []
        for n in held:
            plaintext = presealed.plaintexts[n]
            if presealed.versions[n] == format.VERSION_COMPRESSED:
                plaintext = format.expand(plaintext)
            entries.append((
                format.RecordType.EVENT, presealed.source, presealed.conversations[n], presealed.event_ids[n],
                format.split_plaintext(plaintext)[1],
            ))  # fmt: skip
        tags = [presealed.tags[n] for n in held]
        entries_out, tags_out = await self._versions(entries, tags, in_log)
        changed = [(n, e, t) for n, e, t, old in zip(held, entries_out, tags_out, tags, strict=True) if t != old]
        if not changed:
            return presealed
        event_ids, tags_all, versions = list(presealed.event_ids), list(presealed.tags), bytearray(presealed.versions)
        commitments, plaintexts = list(presealed.commitments), list(presealed.plaintexts)
        for n, (_, _, _, version_id, payload), tag in changed:
            version, commit, plaintext = format.prepare_plaintext(os.urandom(crypto.SALT_BYTES), payload)
            event_ids[n], tags_all[n], versions[n], commitments[n], plaintexts[n] = (
                version_id, tag, version, commit, plaintext
            )  # fmt: skip
        return dataclasses.replace(
            presealed,
            event_ids=event_ids,
            tags=tags_all,
            versions=bytes(versions),
            commitments=commitments,
            plaintexts=plaintexts,
        )

    async def _versions(
        self, entries: Sequence[Entry], tags: list[bytes], in_log: set[bytes]
    ) -> tuple[Sequence[Entry], list[bytes]]:
        """An event whose id the log already holds with *other* content is a conflicting version, not a duplicate.

        Identical (kind, sender, sent time, content without decryption evidence, relation) is a duplicate, as
        a re-delivery after a crash is; so is a copy a later redaction stripped (`_stripped_copy`). Anything
        else (a decrypted export imported over a live capture that could not decrypt, a server that now returns
        other content, the whole event after a stripped copy) is kept: the event is stored under
        `<id>#version-<16 hex of its identity hash>` with `content["version_of"] = <id>`, so both stay in the
        archive. `in_log` gains the tags of versions already stored (repeats are duplicates again).
        """
        changed: list[int] = []
        out_entries, out_tags = list(entries), list(tags)
        for n, ((rtype, source, conv, event_id, payload), tag) in enumerate(zip(entries, tags, strict=True)):
            if rtype != format.RecordType.EVENT or tag not in in_log:
                continue
            stored = await self._stored_event(tag)
            if stored is None:
                continue
            new = event_from_bytes(payload)
            identity = _identity(new)
            if identity == _identity(stored) or _stripped_copy(new, stored):
                continue
            version_id = f"{event_id}#version-{hashlib.sha256(identity).hexdigest()[:16]}"
            version = dataclasses.replace(
                new, event_id=EventId(version_id), content={**new.content, "version_of": event_id}
            )
            out_entries[n] = (rtype, source, conv, version_id, canonical_bytes(version))
            out_tags[n] = dedup_tag(self._index_key, source, conv, version_id)
            changed.append(n)
        if changed:
            in_log |= await self._existing([out_tags[n] for n in changed])
            log.warning(
                "events arrived again with other content; kept as conflicting versions",
                extra={"versions": len(changed)},
            )
        return out_entries, out_tags

    async def _stored_event(self, tag: bytes) -> Event | None:
        """The event the log holds under a dedup tag (decrypted and authenticated), or None if unreadable."""
        epochs = epochs_sql(epoch_of(self._frontier.size))
        sql = f"SELECT header, commitment, body FROM records WHERE {epochs} AND dedup = ?"  # noqa: S608
        async with self._conn.execute(sql, (tag,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        try:
            header_b = bytes(row[0])
            header = format.unpack_header(header_b)
            payload = format.open_record(
                self._keys.log_id, self._sealers, header, header_b, bytes(row[1]), bytes(row[2])
            )
            return event_from_bytes(payload)
        except (format.FormatError, format.RecordAuthError, EncodingError):
            return None  # `verify` names a damaged record; here it only means "treat as a duplicate"

    async def _existing(self, tags: list[bytes]) -> set[bytes]:
        """The tags among `tags` a committed record holds. Only the filter's hits are looked up (a tag it has
        not seen is in no record); they are probed in every epoch of the index."""
        candidates = self._filter.hits(tags) if self._filter_loaded else list(tags)
        if not candidates:
            return set()
        last_epoch = epoch_of(self._frontier.size)
        if self._dedup is not None:  # its own connection and thread: does not wait for the commit in flight
            return await self._dedup.existing(candidates, last_epoch)
        found: set[bytes] = set()
        for i in range(0, len(candidates), 500):
            chunk = candidates[i : i + 500]
            sql = (
                f"SELECT dedup FROM records WHERE {epochs_sql(last_epoch)} AND dedup IN ({','.join('?' * len(chunk))})"  # noqa: S608
            )
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

    def _seal_all(
        self, entries: Sequence[Entry], tags: list[bytes], existing: set[bytes], appended_ms: int
    ) -> tuple[list[_Row], set[bytes]]:
        """Seal the entries whose tags are new (sequence numbers, encryption, hash chain, frontier): (rows, tags).

        One tight loop per batch: this is the writer's hot path (`format.seal_record`).
        """
        rows: list[_Row] = []
        fresh: set[bytes] = set()
        width = crypto.NONCE_BYTES + crypto.SALT_BYTES
        randomness = os.urandom(width * len(entries))  # one syscall per batch, fresh bytes per record
        key_id = self._current_key
        sealer, prefix = self._sealers[key_id], format.ad_prefix(self._keys.log_id)
        frontier, prev = self._frontier, self._prev_leaf
        seal = format.seal_record
        try:
            for n, ((rtype, source, conv, _, payload), tag) in enumerate(zip(entries, tags, strict=True)):
                if tag in existing or tag in fresh:
                    continue
                fresh.add(tag)
                seq, at = frontier.size, n * width
                if rtype in format.CLEAR_TYPES:
                    salt = randomness[at + crypto.NONCE_BYTES : at + width]
                    header, commit, body, leaf = format.seal_clear(rtype, seq, appended_ms, 0, prev, salt, payload)
                else:
                    header, commit, body, leaf = seal(
                        sealer,
                        prefix,
                        rtype,
                        seq,
                        appended_ms,
                        key_id,
                        self._conversation_tag(source, conv),
                        randomness[at : at + crypto.NONCE_BYTES],
                        prev,
                        randomness[at + crypto.NONCE_BYTES : at + width],
                        payload,
                    )
                frontier.append(leaf)
                prev = leaf
                rows.append((seq, tag, header, commit, body, leaf))
        finally:
            self._prev_leaf = prev  # the chain ends at the last leaf the frontier took
        return rows, fresh

    async def _seal_presealed(
        self, presealed: Presealed, existing: set[bytes], appended_ms: int
    ) -> tuple[list[_Row], set[bytes]]:
        """`_seal_all` for a `Presealed` batch: only the part bound to the record's place is left (header,
        AES-GCM, leaf: `format.seal_prepared_rows`, the same bytes as `format.seal_prepared` in turn), for
        the entries whose tags are new, on the batch's own columns, `SEAL_SLICE` records at a time with a
        yield to the event loop between slices; the frontier and the chain change only once all are sealed
        (a cancellation between slices leaves them as they were).

        Why the yields: the batch before commits meanwhile, one statement at a time on aiosqlite's thread,
        each handed over by this loop; sealing 4096 records in one go (~10-16 ms) held up the next statement
        for all that time, and the commit, the import's critical path, took about that much longer."""
        tags, ctags, versions = presealed.tags, presealed.conversation_tags, presealed.versions
        commits, plaintexts = presealed.commitments, presealed.plaintexts
        fresh = set(tags)
        if len(fresh) != len(tags) or not existing.isdisjoint(fresh):  # else the usual batch: every entry new
            fresh = set()
            keep: list[int] = []
            for n, tag in enumerate(tags):
                if tag not in existing and tag not in fresh:
                    fresh.add(tag)
                    keep.append(n)
            tags, ctags, commits, plaintexts = (
                [tags[n] for n in keep], [ctags[n] for n in keep], [commits[n] for n in keep],
                [plaintexts[n] for n in keep],
            )  # fmt: skip
            versions = bytes(versions[n] for n in keep)
        key_id, width, count = self._current_key, crypto.NONCE_BYTES, len(tags)
        sealer, prefix, nonces = self._sealers[key_id], format.ad_prefix(self._keys.log_id), os.urandom(width * count)
        frontier, prev = self._frontier.copy(), self._prev_leaf
        first = frontier.size
        rows: list[_Row] = []
        for start in range(0, count, SEAL_SLICE):
            if start:
                await asyncio.sleep(0)
            end = min(count, start + SEAL_SLICE)
            part = format.seal_prepared_rows(
                sealer, prefix, format.RecordType.EVENT, first + start, appended_ms, key_id, prev, tags[start:end],
                ctags[start:end], nonces[start * width : end * width], versions[start:end], commits[start:end],
                plaintexts[start:end],
            )  # fmt: skip
            frontier.append_many([row[5] for row in part])
            prev = part[-1][5]
            rows += part
        self._frontier, self._prev_leaf = frontier, prev
        return rows, fresh

    async def _commit(self, batch: _Batch) -> tuple[int, int] | None:
        """Write the batch in one transaction; returns the checkpoint it signed, if any."""
        if isinstance(self._conn, db.SqliteWriter) and self._conn.runs_calls:
            return await self._transaction(lambda: self._write(batch), whole=True)
        return await self._transaction(lambda: self._write(batch))

    async def _write(self, batch: _Batch) -> tuple[int, int] | None:
        """The batch's statements: on SQLite the whole transaction at once on the connection's thread
        (`_commit_at_once`), elsewhere inside the caller's transaction."""
        conn = self._conn
        if isinstance(conn, db.SqliteWriter) and conn.runs_calls:
            return await self._commit_at_once(conn, batch)
        if batch.rows:
            await _insert_records(conn, batch.rows)
        if batch.duplicates:
            await conn.execute(_ADD_DUPLICATES, (batch.duplicates,))
        if batch.cursor is not None:
            await conn.execute(_PUT_CURSOR, self._cursor_row(batch.cursor))
        if self._checkpoint_due(batch.frontier.size):
            return await self._insert_checkpoint(batch.frontier)
        return None

    async def _commit_at_once(self, conn: db.SqliteWriter, batch: _Batch) -> tuple[int, int] | None:
        """`_write`'s statements between BEGIN IMMEDIATE and COMMIT (ROLLBACK on any failure) in one call on
        the SQLite connection's thread: what `_run_transaction` does in four or five calls.

        Why: each call is a hand-over to that thread and back to the event loop, and while the loop seals or
        preseals the next batch each waits for the GIL or for the loop's turn (2-4 ms each way, measured on
        `bench/ingest.py`'s import at 10^5); the commits are the import's critical path. The statements and
        the checkpoint's signature are made here, on the loop, before the hand-over."""
        statements = _insert_statements(conn.backend, batch.rows)
        if batch.duplicates:
            statements.append((_ADD_DUPLICATES, [(batch.duplicates,)]))
        if batch.cursor is not None:
            statements.append((_PUT_CURSOR, [self._cursor_row(batch.cursor)]))
        signed: tuple[int, int] | None = None
        if self._checkpoint_due(batch.frontier.size):
            row = checkpoint_row(self._keys, batch.frontier)
            statements.append((_INSERT_CHECKPOINT, [row]))
            signed = (row[0], row[1])
        await conn.run(functools.partial(_run_statements, statements))
        if signed is not None:
            self._signed_in_transaction = True
        return signed

    def _cursor_row(self, cursor: tuple[str, str]) -> tuple[str, str, int, bytes]:
        return (cursor[0], seal_cursor(self._index_key, *cursor), now_ms(), cursor_mac(self._index_key, *cursor))

    def _checkpoint_due(self, size: int) -> bool:
        pending = size - max(self._last_cp_size, 0)
        if pending <= 0:
            return False
        if pending >= self._policy.every_records:
            return True
        return (now_ms() - self._last_cp_ms) >= self._policy.every_seconds * 1000

    async def _insert_checkpoint(self, frontier: merkle.Frontier) -> tuple[int, int]:
        """Sign and insert a checkpoint (inside the caller's transaction): (size, created ms)."""
        row = checkpoint_row(self._keys, frontier)
        await self._conn.execute("INSERT INTO checkpoints (size, created_ms, note, frontier) VALUES (?, ?, ?, ?)", row)
        self._signed_in_transaction = True
        return (row[0], row[1])

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
        """Add a new data key and make it current; old keys stay for reading.

        The key is appended as a KEY record (under the proof) with its key-table
        row in one transaction, and sealed by a checkpoint at once.
        """
        async with self._seal_lock:
            await self._quiesce()
            new_id = max(self._data_keys) + 1
            key = crypto.random_key()
            record = key_record(self._keys, new_id, DATA_PURPOSE, key, now_ms())
            frontier, prev = self._committed[0].copy(), self._committed[1]
            row = seal_key_record(record, frontier.size, record.created_ms, prev)
            frontier.append(row[5])

            async def write() -> tuple[int, int]:
                await self._conn.execute(
                    "INSERT INTO records (seq, dedup, header, commitment, body, leaf) VALUES (?, ?, ?, ?, ?, ?)", row
                )
                await self._conn.execute(
                    "INSERT INTO keys (key_id, purpose, created_ms, wrapped, seq) VALUES (?, ?, ?, ?, ?)",
                    key_row(record, row[0]),
                )
                return await self._insert_checkpoint(frontier)

            sealed = await self._transaction(write)
            self._committed = (frontier, row[5])
            self._frontier, self._prev_leaf = frontier.copy(), row[5]
            self._last_cp_size, self._last_cp_ms = sealed
            self._data_keys[new_id] = key
            self._sealers[new_id] = crypto.Sealer(key)
            self._current_key = new_id
            return new_id

    @property
    def key_chain(self) -> KeyChain:
        """The log's signing keys, pinned one first (checked rotation records)."""
        return self._chain

    async def rotate_signing_key(self, new: Ed25519PrivateKey) -> tuple[int, str]:
        """Hand checkpoint signing over to `new`: (position of the rotation record, new verifier key).

        In one transaction: a checkpoint at the current size by the old key (if there is none yet), the
        SIGNING_KEY record (signed by the old and the new key, `rotation.make_record`) and a checkpoint over
        it signed by both keys. From then on this store signs with `new`; the old key is no longer needed.
        """
        async with self._seal_lock:
            await self._quiesce()
            old, name = self._keys.signing_key, self._keys.key_name
            new_vkey = checkpoint.format_vkey(name, new.public_key())
            if new_vkey in self._chain.vkeys():
                raise UsageError("the new signing key was already used by this log; make a fresh one")
            before, prev = self._committed[0].copy(), self._committed[1]
            seq, created = before.size, now_ms()
            rec = rotation.make_record(name, seq, created, old, new)
            chain = self._chain.copy()
            chain.rotate(seq, rec)  # the very check every verifier runs
            salt = os.urandom(crypto.SALT_BYTES)
            header, commit, body, leaf = format.seal_clear(
                format.RecordType.SIGNING_KEY, seq, created, 0, prev, salt, rec.encode()
            )
            after = before.copy()
            after.append(leaf)
            signer = self._keys.with_signer(new)

            async def write() -> tuple[int, int]:
                async with self._conn.execute("SELECT 1 FROM checkpoints WHERE size = ?", (seq,)) as cur:
                    signed = await cur.fetchone() is not None
                if not signed:
                    await self._conn.execute(_INSERT_CHECKPOINT, checkpoint_row(self._keys, before))
                await self._conn.execute(
                    _INSERT_RECORD, (seq, rotation.dedup_of(rec.new_vkey), header, commit, body, leaf)
                )
                size, ms, note, edge = checkpoint_row(signer, after)
                await self._conn.execute(_INSERT_CHECKPOINT, (size, ms, rotation.cosign_note(note, name, old), edge))
                self._signed_in_transaction = True
                return size, ms

            sealed = await self._transaction(write)
            self._committed = (after, leaf)
            self._frontier, self._prev_leaf = after.copy(), leaf
            self._last_cp_size, self._last_cp_ms = sealed
            self._keys, self._chain = signer, chain
            log.info("signing key rotated", extra={"seq": seq})
            return seq, new_vkey

    async def seal_prefix(self, size: int) -> str:
        """The signed checkpoint note at tree size `size`: the stored one, else one signed now and stored.

        Used to close a month at its last record. The root is computed from
        leaves recomputed from the stored bytes, starting at the newest proven
        checkpoint edge at or below `size`, and shown consistent with what is
        already signed (the next checkpoint above `size`, or this writer's own
        authenticated head) before anything is signed.
        """
        async with self._seal_lock:
            await self._quiesce()
            head, _ = self._committed
            if not 0 <= size <= head.size:
                raise UsageError(f"cannot seal tree size {size}: the log holds {head.size} records")
            async with self._conn.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)) as cur:
                found = await cur.fetchone()
            if found is not None:
                _verified(str(found[0]), self._chain, size)
                return str(found[0])
            prefix = await self._proven_prefix(size)

            async def write() -> str:
                row = checkpoint_row(self._keys, prefix)
                await self._conn.execute(
                    "INSERT INTO checkpoints (size, created_ms, note, frontier) VALUES (?, ?, ?, ?)", row
                )
                return row[2]

            return await self._transaction(write)

    async def _proven_prefix(self, size: int) -> merkle.Frontier:
        """The tree's edge at `size`, from leaves that are shown to be the signed (or own) ones."""
        async with self._conn.execute(
            "SELECT size, note, frontier FROM checkpoints WHERE size <= ? ORDER BY size DESC LIMIT 1", (size,)
        ) as cur:
            low = await cur.fetchone()
        async with self._conn.execute(
            "SELECT size, note FROM checkpoints WHERE size > ? ORDER BY size LIMIT 1", (size,)
        ) as cur:
            high = await cur.fetchone()
        frontier = merkle.Frontier()
        if low is not None:
            _, frontier = _proven_edge(self._chain, int(low[0]), str(low[1]), bytes(low[2]))
        head, _ = self._committed
        if high is not None:
            target_size, target_root = int(high[0]), _verified(str(high[1]), self._chain, int(high[0])).root
        else:
            target_size, target_root = head.size, head.root()
        prefix: merkle.Frontier | None = frontier.copy() if frontier.size == size else None
        async with self._conn.execute(
            "SELECT seq, header, commitment, body FROM records WHERE seq >= ? AND seq < ? ORDER BY seq",
            (frontier.size, target_size),
        ) as cur:
            while batch := await cur.fetchmany(4096):
                for seq, header_b, commit, body in batch:
                    audit.check_position(frontier.size, seq)
                    frontier.append(format.leaf_of(bytes(header_b), bytes(commit), bytes(body)))
                    if frontier.size == size:
                        prefix = frontier.copy()
        if frontier.size != target_size or not crypto.hmac_equal(frontier.root(), target_root):
            raise LogIntegrityError(
                max(size - 1, 0),
                f"records up to {target_size - 1} do not give the signed root at {target_size}",
                f"size {target_size}, root {target_root.hex()}",
                f"size {frontier.size}, root {frontier.root().hex()}",
                check=Check.CHECKPOINT_ROOT,
            )
        assert prefix is not None
        return prefix

    async def _transaction(self, body: Callable[[], Awaitable[T]], *, whole: bool = False) -> T:
        """`body` between BEGIN and COMMIT (ROLLBACK on failure), never abandoned half-way: a cancellation
        waits until the transaction has ended, then goes on.

        Why: a statement handed to the connection's thread (aiosqlite) or server session (psycopg) does not stop
        when the await on it is cancelled. A cancellation landing while BEGIN was on its way left the
        transaction open with nothing to end it (every later write, the checkpoint at stop included, failed);
        psycopg answers a cancelled query by closing the connection, the writer lock with it. The transaction
        runs as its own task that cancelling the caller cannot reach; the caller then goes on as the transaction
        ended (its bookkeeping matches what is committed) and the cancellation is delivered again at its next
        await (the caller of a committed batch may then acknowledge nothing: a replay is deduplicated). The wait
        is one transaction long (tests/test_log_cancel.py). `whole`: `body` runs BEGIN, its statements and
        COMMIT or ROLLBACK itself (`_commit_at_once`).
        """
        inner = asyncio.ensure_future(self._run_transaction(body, whole))
        current = asyncio.current_task()
        cancelled = False
        try:
            while True:
                try:
                    return await asyncio.shield(inner)
                except asyncio.CancelledError:
                    if inner.cancelled() or current is None:
                        raise
                    current.uncancel()  # taken back here, delivered again below once the transaction has ended
                    cancelled = True
        finally:
            if cancelled and current is not None:
                current.cancel()

    async def _run_transaction(self, body: Callable[[], Awaitable[T]], whole: bool = False) -> T:
        self._signed_in_transaction = False
        try:
            if whole:
                result = await body()
            else:
                await self._conn.execute("BEGIN IMMEDIATE")
                try:
                    result = await body()
                    await self._conn.execute("COMMIT")
                except BaseException:
                    await self._conn.execute("ROLLBACK")
                    raise
        except self._conn.errors as exc:
            raise StorageError(f"could not write to the log: {exc}") from exc
        if self._signed_in_transaction and self.on_checkpoint is not None:
            try:
                self.on_checkpoint()
            except Exception:  # a listener's bug must not fail a committed write
                log.exception("on_checkpoint listener failed")
        return result


_Row = tuple[int, bytes, bytes, bytes, bytes, bytes]
_INSERT_RECORD = "INSERT INTO records (seq, dedup, header, commitment, body, leaf) VALUES (?, ?, ?, ?, ?, ?)"
_INSERT_CHECKPOINT = "INSERT INTO checkpoints (size, created_ms, note, frontier) VALUES (?, ?, ?, ?)"
#: Records a presealed batch seals between two yields to the event loop (`LogStore._seal_presealed`): ~1-2 ms.
SEAL_SLICE = 512

# `bytes` bound as itself, found in the adapter registry at once. Why: `sqlite3` (3.11) binds int, float, str
# and bytearray directly but sends every `bytes` value through its adaptation protocol, which looks for
# `PrepareProtocol.__adapt__` on a type object and so builds and drops an AttributeError (a formatted
# message) per value: five per record, ~0.5 us per record of the SQLite thread's time with the GIL held,
# beside the loop that seals the next batch. With this entry the value is looked up and returned as it is
# (`bytes.__bytes__(b)` is `b` for an exact bytes object, Python 3.11+; a method descriptor is called with less
# overhead than the type: 190 against 260 ns per bound value): the same value bound, for every connection in
# the process.
sqlite3.register_adapter(bytes, bytes.__bytes__)


def _statement_sizes() -> tuple[int, ...]:
    """Rows per multi-row INSERT on SQLite, largest first: powers of two from 4096 (a whole import batch)
    down to 8, as far as SQLite's limit on bound variables (6 a row) allows (32766 by default since 3.32,
    999 before)."""
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return tuple(size for size in (4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8) if 6 * size <= limit)


#: Rows per INSERT statement on SQLite (`_insert_records`).
STATEMENT_ROWS = _statement_sizes()
#: `OR FAIL`: a conflict ends the statement without undoing its earlier rows, so SQLite keeps no statement
#: journal (a temporary file holding the original of every page the statement changes, ~190 bytes written per
#: row); the transaction is rolled back whole on any error anyway (`LogStore._run_transaction`).
_INSERTS = {
    size: _INSERT_RECORD.replace("INSERT", "INSERT OR FAIL", 1) + ", (?, ?, ?, ?, ?, ?)" * (size - 1)
    for size in STATEMENT_ROWS
}


#: A statement and the parameters it is run with (`executemany`), in a transaction's order.
_Statement = tuple[str, list[Sequence[object]]]
_ADD_DUPLICATES = (
    "INSERT INTO counters (name, value) VALUES ('duplicates', ?)"
    " ON CONFLICT(name) DO UPDATE SET value = counters.value + excluded.value"
)
_PUT_CURSOR = (
    "INSERT INTO cursors (name, value, updated_ms, mac) VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE"
    " SET value = excluded.value, updated_ms = excluded.updated_ms, mac = excluded.mac"
)


def _insert_statements(backend: str, rows: list[_Row]) -> list[_Statement]:
    """The statements that insert `rows` in order: on SQLite as few multi-row statements as `STATEMENT_ROWS`
    allows (one for an import batch of 4096), the last few (fewer than 8) one by one; on PostgreSQL the one-row
    statement for every row, as before.

    Why: `sqlite3` binds a statement's values with the GIL held, releases it for `sqlite3_step` and must take
    it back after; while the event loop seals the next batch (Python, hashing and AES-GCM that hold the GIL
    for up to the switch interval, 5 ms, at a time), each take-back waits. A 4096-row commit beside such a
    thread took 42-44 ms with one statement per 128 rows (and 50-3800 ms with one per row) against 18-19 ms
    with one statement, the same as with the loop idle (docs/log-format.md, "Import at scale"). Same rows,
    same order. Each statement size is prepared once per connection (~10 ms for 4096 rows) and cached."""
    statements: list[_Statement] = []
    start = 0
    if backend == db.SQLITE:
        flat = itertools.chain.from_iterable
        for size in STATEMENT_ROWS:
            count = (len(rows) - start) // size
            if count:
                spans = range(start, start + count * size, size)
                statements.append((_INSERTS[size], [tuple(flat(rows[at : at + size])) for at in spans]))
                start += count * size
    if start < len(rows):
        statements.append((_INSERT_RECORD, list(rows[start:])))
    return statements


async def _insert_records(conn: db.Writer, rows: list[_Row]) -> None:
    """Insert `rows` in order, in the caller's transaction (`_insert_statements`)."""
    for sql, params in _insert_statements(conn.backend, rows):
        await conn.executemany(sql, params)


def _run_statements(statements: list[_Statement], conn: sqlite3.Connection) -> None:
    """On the connection's own thread: `statements` in one transaction, rolled back whole on any failure
    (a failed COMMIT included; SQLite may have ended the transaction already)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, params in statements:
            conn.executemany(sql, params)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


async def key_chain(conn: db.Writer, keys: KeyMaterial) -> KeyChain:
    """The log's key chain from the key file's (pinned) key through the stored rotation records; refuses a
    loaded signing key that is not the chain's current one (KeyFileError, exit 2) before anything is signed."""
    async with conn.execute(rotation.ROTATION_ROWS_SQL) as cur:
        rows = [tuple(r) async for r in cur]
    chain = rotation.chain_from_rows((keys.key_name, keys.public_key), rows)
    signing = None if keys.signer is None else rotation.vkey_of((keys.key_name, keys.signer.public_key()))
    if signing is not None and signing != rotation.vkey_of(chain.current):
        retired = chain.retired_by(signing)
        why = f"holds the key retired by rotation record {retired}" if retired is not None else "does not hold"
        raise KeyFileError(
            f"the signing key file {why}{'' if retired is not None else ' the current signing key'} of this log;"
            f" point storage.signing_key_file (or --signing-key) at the file of {rotation.vkey_of(chain.current)}"
        )
    return chain


@dataclass(frozen=True, slots=True)
class _Batch:
    """A sealed batch waiting for its commit."""

    rows: list[_Row]
    duplicates: int
    cursor: tuple[str, str] | None
    frontier: merkle.Frontier
    prev_leaf: bytes
    tags: set[bytes]


async def _signed_frontier(conn: db.Writer, chain: KeyChain) -> tuple[merkle.Frontier, tuple[int, int]]:
    """The tree's right edge at the newest checkpoint, proven by its signature; ((size, ms)), or the empty tree."""
    sql = "SELECT size, created_ms, note, frontier FROM checkpoints ORDER BY size DESC LIMIT 1"
    async with conn.execute(sql) as cur:
        row = await cur.fetchone()
    if row is None:  # every log starts with a checkpoint; without one, authenticate from record 0
        return merkle.Frontier(), (-1, now_ms())
    size = int(row[0])
    _, frontier = _proven_edge(chain, size, str(row[2]), bytes(row[3]))
    return frontier, (size, int(row[1]))


async def _leaf_before(conn: db.Writer, size: int) -> bytes:
    """The leaf of record `size - 1` recomputed from its stored bytes (the chain link of the next record)."""
    if size == 0:
        return format.GENESIS_PREV
    async with conn.execute("SELECT header, commitment, body FROM records WHERE seq = ?", (size - 1,)) as cur:
        row = await cur.fetchone()
    if row is None:
        raise LogIntegrityError(
            size - 1, f"log truncated: a signed checkpoint covers {size} records", check=Check.TRUNCATED
        )
    return format.leaf_of(bytes(row[0]), bytes(row[1]), bytes(row[2]))


def _verified(note: str, chain: KeyChain, size: int) -> checkpoint.Checkpoint:
    """The checkpoint stored at tree size `size`, signed by this log's key for that size."""
    try:
        cp = chain.verify_checkpoint(note)
    except checkpoint.CheckpointError as exc:
        raise LogIntegrityError(
            size, f"checkpoint for tree size {size} does not verify: {exc}", check=Check.CHECKPOINT_SIGNATURE
        ) from None
    if cp.size != size:
        raise LogIntegrityError(
            size,
            f"checkpoint stored at tree size {size} is signed for {cp.size}",
            size,
            cp.size,
            check=Check.CHECKPOINT_ROW,
        )
    return cp


def _proven_edge(chain: KeyChain, size: int, note: str, edge: bytes) -> tuple[checkpoint.Checkpoint, merkle.Frontier]:
    """A checkpoint and its stored tree edge, the edge trusted only because it gives the signed root."""
    cp = _verified(note, chain, size)
    try:
        frontier = frontier_from_bytes(edge)
    except ValueError as exc:
        raise LogIntegrityError(
            size, f"the stored tree edge at checkpoint {size} is damaged: {exc}", check=Check.EDGE
        ) from None
    if frontier.size != size or not crypto.hmac_equal(frontier.root(), cp.root):
        raise LogIntegrityError(
            size,
            f"the stored tree edge at checkpoint {size} does not give its signed root",
            f"size {size}, root {cp.root.hex()}",
            f"size {frontier.size}, root {frontier.root().hex()}",
            check=Check.EDGE,
        )
    return cp, frontier


def _file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


#: What a copy of an event redacted before it was captured carries besides (or instead of) its content.
_REDACTION_MARKERS = frozenset({"redacted_before_capture", "redacted_by", "recovered_via", "encryption"})


def _stripped_copy(new: Event, stored: Event) -> bool:
    """Whether `new` is the log's `stored` event brought again after a redaction stripped it (the sync loop
    behind the spool, a replay after a crash): the same sender and time, and as content only the
    `redacted_before_capture` marker, or the original the server gave back (MSC2815) with it. That is a
    duplicate, not a conflicting version: the event did not change, a later redaction (its own record) came."""
    if new.content.get("redacted_before_capture") is not True or "redacted_before_capture" in stored.content:
        return False
    if (new.sender, new.sent_at) != (stored.sender, stored.sent_at):
        return False
    rest = {k: v for k, v in new.content.items() if k not in _REDACTION_MARKERS}
    if not rest and "recovered_via" not in new.content:
        return True
    whole = {k: v for k, v in stored.content.items() if k != "encryption"}
    return (new.kind, rest, new.relates_to) == (stored.kind, whole, stored.relates_to)


def _identity(event: Event) -> bytes:
    """What makes two deliveries of one event id the same event: not when it arrived, not the decryption
    evidence, not the raw envelope's transport fields (a server's `unsigned.age` changes on every delivery)."""
    content = {k: v for k, v in event.content.items() if k != "encryption"}
    return canonical_json(
        {
            "kind": event.kind.value,
            "sender": event.sender,
            "sent_at": event.sent_at,
            "content": content,
            "relates_to": event.relates_to,
        }
    )
