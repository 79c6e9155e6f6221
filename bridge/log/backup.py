"""Online copy of a SQLite database beside its running writer (SQLite's backup API).

Contract: `copy_database(src, dst)` writes a consistent, self-contained copy of
the database at `src` (what its WAL holds included) to `dst`, which must not
exist. The copy is one read transaction over the source (`pages=-1`: one step),
so it is the database as of one commit; in WAL mode the writer goes on
meanwhile. It is written to a temp name beside `dst`, checked with
`PRAGMA quick_check`, switched out of WAL mode (one file, nothing beside it),
fsynced and renamed into place: a crash leaves no `dst`. Returns the copy's
`records` row count when it holds a `records` table (the log), else None.

This is the only SQL outside the store, reader and verifier: it knows no
schema beyond the name of the log's table, so it also copies the Matrix crypto
store's SQLite files.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from bridge.durable import fsync_dir
from bridge.errors import StorageError

SQLITE_MAGIC = b"SQLite format 3\x00"


def is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def copy_database(src: Path, dst: Path) -> int | None:
    """Copy the database `src` to the new file `dst` (see the module docstring)."""
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(17, "File exists", str(dst))
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
        try:
            target = sqlite3.connect(tmp, isolation_level=None)
            try:
                source.backup(target, pages=-1)
                problems = [row[0] for row in target.execute("PRAGMA quick_check")]
                if problems != ["ok"]:
                    raise StorageError(f"the copy of {src} fails SQLite's quick_check: {'; '.join(problems)[:300]}")
                target.execute("PRAGMA journal_mode=DELETE")
                has_records = target.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'"
                ).fetchone()
                records = target.execute("SELECT count(*) FROM records").fetchone()[0] if has_records else None
            finally:
                target.close()
        finally:
            source.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o600)
        os.link(tmp, dst)  # never replaces a file that appeared meanwhile
        tmp.unlink()
        fsync_dir(dst.parent)
    except sqlite3.Error as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot copy the database {src}: {exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return None if records is None else int(records)
