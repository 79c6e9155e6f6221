"""`chatarchief backup`: a consistent copy of a data dir, taken while `run` writes it.

Contract: `backup(data_dir, out, extra)` creates `out` (0700; it must not
exist, nor lie inside the data dir) and copies, in this order:

1. the log (`log.sqlite3`) through SQLite's backup API (`bridge.log.backup`):
   the log as of one commit, its cursors (Matrix sync token, Signal cursor)
   with it;
2. every other file of the data dir: SQLite files (the Matrix crypto store)
   through the backup API too, the rest (encrypted media blobs, the Matrix
   session) byte for byte, fsynced. The crypto store and the blobs are copied
   after the log, so they are at least as new as it: every blob a copied record
   names is there, and room keys that arrived up to the log's cursor are kept.
3. `extra` folders (a Matrix store kept outside the data dir) the same way;
4. `BACKUP.json` last (format, time, version, record count, and the SHA-256 and
   size of every file): a backup without it is incomplete.

Skipped: SQLite's `-wal`/`-shm`/`-journal` files (the copies are
self-contained), the writer lock, the control socket and anything not a regular
file, temp files (`.name.tmp`), `tmp/`, where a snapshot in progress keeps
its plaintext bag, and `outbox/`, plaintext packages waiting for their upload
(rebuilt from the log byte for byte if lost). Nothing here decrypts: the copy is as unreadable without the
key file as the data dir, and the key file is never copied (escrow it apart,
docs/keys.md). Restoring is copying `out` back to an empty data dir and
starting `run` (docs/operations.md, "Restore").
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from bridge import __version__
from bridge.archive.package import TMP_DIR
from bridge.clock import now_ms
from bridge.durable import fsync_dir, write_exclusive
from bridge.errors import UsageError
from bridge.log.backup import copy_database, is_sqlite
from bridge.log.db import MARKER_NAME
from bridge.log.schema import DB_NAME
from bridge.worm import OUTBOX

__all__ = ["MANIFEST", "BackupReport", "backup"]

MANIFEST = "BACKUP.json"
FORMAT = "chatarchief-backup/1"
_SKIP_NAMES = frozenset({"writer.lock", "control.sock"})
_SKIP_SUFFIXES = ("-wal", "-shm", "-journal", ".tmp")


@dataclass(frozen=True, slots=True)
class BackupReport:
    out: Path
    records: int
    files: int
    bytes: int


def backup(data_dir: Path, out: Path, extra: Mapping[str, Path] | None = None) -> BackupReport:
    """Copy `data_dir` (and `extra` folders) into the new folder `out`; see the module docstring."""
    db = data_dir / DB_NAME
    if not db.is_file() and (data_dir / MARKER_NAME).is_file():
        raise UsageError(
            f"the log of {data_dir} lives in PostgreSQL: back it up with pg_dump or base backups, then verify the"
            " restored copy (docs/postgresql.md)"
        )
    if not db.is_file():
        raise UsageError(f"{data_dir} holds no log ({DB_NAME}); check --data-dir or storage.data_dir")
    if out.exists() or out.is_symlink():
        raise UsageError(f"{out} already exists; a backup goes into a new folder (it never overwrites)")
    resolved = out.resolve()
    if resolved.is_relative_to(data_dir.resolve()):
        raise UsageError(f"{out} is inside the data dir {data_dir}; put the backup elsewhere")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent} does not exist; create it first")
    out.mkdir(mode=0o700)
    records = copy_database(db, out / DB_NAME)
    assert records is not None, "the log has a records table"
    hashed: dict[Path, tuple[str, int]] = {}
    for src, rel in _files(data_dir, top=True):
        _copy(src, out / rel, hashed)
    for name, folder in (extra or {}).items():
        for src, rel in _files(folder, top=False):
            _copy(src, out / name / rel, hashed)
    for folder in sorted({p.parent for p in hashed}, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(folder)  # once per folder, deepest first, after its files were fsynced
    fsync_dir(out)
    files: dict[str, dict[str, int | str]] = {}
    total = 0
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        digest, size = hashed[path] if path in hashed else _digest(path)
        files[path.relative_to(out).as_posix()] = {"sha256": digest, "size": size}
        total += size
    manifest = {"format": FORMAT, "created_ms": now_ms(), "version": __version__, "log_records": records}
    manifest["files"] = files
    write_exclusive(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n", 0o600)
    return BackupReport(out, records, len(files), total)


def _files(root: Path, *, top: bool) -> Iterator[tuple[Path, Path]]:
    """Regular files under `root` worth copying, with their path relative to it (see the module docstring)."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = here.relative_to(root)
        if top and rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in (TMP_DIR, OUTBOX)]
        dirnames.sort()
        for name in sorted(filenames):
            if top and rel_dir == Path(".") and name == DB_NAME:
                continue  # copied first, through the backup API
            if name in _SKIP_NAMES or name.endswith(_SKIP_SUFFIXES) or name.startswith(".healthz-probe"):
                continue
            src = here / name
            if stat.S_ISREG(src.lstat().st_mode):
                yield src, rel_dir / name


def _copy(src: Path, dst: Path, hashed: dict[Path, tuple[str, int]]) -> None:
    """Copy one file (SQLite through the backup API); plain files are hashed as they are copied."""
    dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if is_sqlite(src):
        copy_database(src, dst)
        return
    h = hashlib.sha256()
    size = 0
    try:
        with src.open("rb") as reader, dst.open("xb") as writer:
            for chunk in iter(lambda: reader.read(1 << 20), b""):
                h.update(chunk)
                writer.write(chunk)
                size += len(chunk)
            writer.flush()
            os.fsync(writer.fileno())
    except FileNotFoundError:
        if src.exists():
            raise
        dst.unlink(missing_ok=True)  # removed while we walked (a temp file, a replaced session): nothing to keep
        return
    os.chmod(dst, 0o600)
    hashed[dst] = (h.hexdigest(), size)


def _digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
