"""`migrate-store`: copy a SQLite log into PostgreSQL, row for row, and prove both have the same signed root.

Contract: `migrate_to_postgresql(data_dir, target, new_data_dir, keys)` holds the SQLite log's writer lock
(no bot or command appends meanwhile), refuses a target schema that holds any log table, creates the schema
and copies every table (meta, keys, records, checkpoints, cursors, counters) and the media files (into
`blobs`) in ONE PostgreSQL transaction (a failure leaves the target empty), then writes the marker into
`new_data_dir` (with a copy of the media files) and verifies both logs from their stored bytes: the same
records give the same leaves, so both must report the same record count, root and newest signed checkpoint,
else `LogIntegrityError`. Nothing is re-encrypted or re-signed: the copy is the same log.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bridge.errors import Check, LogIntegrityError, StorageError, UsageError
from bridge.log import db
from bridge.log.keys import KeyMaterial
from bridge.log.lock import WriterLock
from bridge.log.verify import VerifyReport, open_readonly, verify_log

#: Every table with its columns, in copy order.
TABLE_COLUMNS = {
    "meta": "k, v",
    "keys": "key_id, purpose, created_ms, wrapped, seq",
    "records": "seq, dedup, header, commitment, body, leaf",
    "checkpoints": "size, created_ms, note, frontier",
    "cursors": "name, value, updated_ms, mac",
    "counters": "name, value",
}
_CHUNK = 4096


@dataclass(frozen=True, slots=True)
class Migrated:
    rows: dict[str, int]
    source: VerifyReport
    target: VerifyReport


def migrate_to_postgresql(
    data_dir: Path,
    target: db.PgTarget,
    new_data_dir: Path,
    keys: KeyMaterial | None = None,
    progress: Callable[[int], None] | None = None,
) -> Migrated:
    if db.backend_of(data_dir) != db.SQLITE:
        raise UsageError(f"{data_dir} holds no SQLite log to migrate")
    if db.backend_of(new_data_dir) is not None:
        raise UsageError(f"{new_data_dir} already holds a log; pick an empty directory for the PostgreSQL log")
    lock = WriterLock.acquire(data_dir)  # WriterBusy (exit 2) while a bot or a command writes the log
    try:
        counts = _copy(data_dir, target, progress)
        new_data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        blobs = data_dir / "blobs"
        if blobs.is_dir():
            shutil.copytree(blobs, new_data_dir / "blobs", dirs_exist_ok=False)
        db.write_marker(new_data_dir, target)
        source = verify_log(data_dir, keys)
    finally:
        lock.release()
    copied = verify_log(new_data_dir, keys)
    if (source.records, source.root, source.newest_checkpoint) != (
        copied.records,
        copied.root,
        copied.newest_checkpoint,
    ):
        raise LogIntegrityError(
            None,
            "the PostgreSQL copy does not reproduce the SQLite log's signed root",
            f"{source.records} records, root {source.root.hex()}",
            f"{copied.records} records, root {copied.root.hex()}",
            check=Check.CHECKPOINT_ROOT,
        )
    return Migrated(counts, source, copied)


def _copy_blobs(root: Path, dst: psycopg.Connection[Any]) -> int:
    """The media files into the `blobs` table (a standby restores them from there; see db.py)."""
    n = 0
    for path in sorted(root.glob("??/*")) if root.is_dir() else []:
        if len(path.name) == 40 and path.parent.name == path.name[:2] and path.is_file():
            dst.execute("INSERT INTO blobs (blob_id, data) VALUES (%s, %s)", (path.name, path.read_bytes()))
            n += 1
    return n


def _copy(data_dir: Path, target: db.PgTarget, progress: Callable[[int], None] | None) -> dict[str, int]:
    src = open_readonly(data_dir)
    dst = db.pg_connect(target, app="chatarchief-migrate")
    counts: dict[str, int] = {}
    try:
        if not db.pg_is_empty(dst):
            raise UsageError(f"{target.describe()} already holds log tables; migrate-store only fills an empty one")
        src.execute("BEGIN")  # one snapshot of the source
        with dst.transaction():
            # The layout of the source's schema version (its meta row is copied as it is); the PostgreSQL
            # writer migrates it at its first open (`bridge.log.migrations`).
            dst.execute(db.pg_schema(db.claimed_version(src)))
            for table, columns in TABLE_COLUMNS.items():
                n = 0
                order = " ORDER BY seq" if table == "records" else ""
                cur = src.execute(f"SELECT {columns} FROM {table}{order}")  # noqa: S608 - fixed names
                with dst.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    while chunk := cur.fetchmany(_CHUNK):
                        for row in chunk:
                            copy.write_row(row)
                        n += len(chunk)
                        if progress is not None and table == "records":
                            progress(n)
                counts[table] = n
            counts["blobs"] = _copy_blobs(data_dir / "blobs", dst)
        src.execute("COMMIT")
    except psycopg.Error as exc:
        raise StorageError(f"cannot copy into {target.describe()}: {str(exc).strip().splitlines()[0]}") from None
    finally:
        src.close()
        dst.close()
    return counts
