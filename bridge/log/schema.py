"""The on-disk layout of a log: schema, creation, key unwrapping, index tags (pure helpers + init).

Shared by the writer (`store`), the offline verifier (`verify`) and the read-only
reader (`reader`), none of which may trust the others' in-memory state.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from bridge.errors import KeyFileError, UsageError
from bridge.log import crypto, format, merkle
from bridge.log.keys import KeyMaterial

DB_NAME = "log.sqlite3"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE keys (
    key_id INTEGER PRIMARY KEY, purpose TEXT NOT NULL, created_ms INTEGER NOT NULL, wrapped BLOB NOT NULL);
CREATE TABLE records (
    seq INTEGER PRIMARY KEY, dedup BLOB NOT NULL UNIQUE, header BLOB NOT NULL,
    commitment BLOB NOT NULL, body BLOB NOT NULL, leaf BLOB NOT NULL);
CREATE TABLE checkpoints (size INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL, note TEXT NOT NULL);
CREATE TABLE cursors (
    name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_ms INTEGER NOT NULL, mac BLOB NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TRIGGER records_no_update BEFORE UPDATE ON records BEGIN SELECT RAISE(ABORT, 'append-only'); END;
CREATE TRIGGER records_no_delete BEFORE DELETE ON records BEGIN SELECT RAISE(ABORT, 'append-only'); END;
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'append-only'); END;
CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'append-only'); END;
"""


def expected_schema() -> list[tuple[str, str, str, str | None]]:
    """(type, name, table, sql) of every schema object a log holds, sorted: what `verify` compares against."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(_SCHEMA)
        return sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
    finally:
        conn.close()


INDEX_PURPOSE = "index"
DATA_PURPOSE = "data"


def db_path(data_dir: Path) -> Path:
    return data_dir / DB_NAME


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _connect_sync(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def initialise(data_dir: Path, keys: KeyMaterial) -> None:
    """Create an empty log in `data_dir` (which must not hold one already)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = db_path(data_dir)
    if path.exists():
        raise UsageError(f"{path} already exists; refusing to overwrite an existing log")
    conn = _connect_sync(path)
    try:
        conn.executescript(_SCHEMA)
        created = now_ms()
        conn.execute("BEGIN")
        meta = {
            "schema_version": str(SCHEMA_VERSION).encode(),
            "log_id": keys.log_id,
            "vkey": keys.vkey().encode("ascii"),
            "kek_check": crypto.kek_check(keys.kek, keys.log_id),
            "current_data_key": b"1",
        }
        conn.executemany("INSERT INTO meta (k, v) VALUES (?, ?)", list(meta.items()))
        for key_id, purpose in ((0, INDEX_PURPOSE), (1, DATA_PURPOSE)):
            wrapped = crypto.wrap_key(keys.kek, keys.log_id, key_id, purpose, crypto.random_key())
            conn.execute(
                "INSERT INTO keys (key_id, purpose, created_ms, wrapped) VALUES (?, ?, ?, ?)",
                (key_id, purpose, created, wrapped),
            )
        conn.execute("COMMIT")
    finally:
        conn.close()


def unwrap_keys(rows: Sequence[tuple[int, str, bytes]], keys: KeyMaterial) -> tuple[bytes, dict[int, bytes]]:
    """(index key, {key_id: data key}) from the keys table; raises crypto.AuthError."""
    index_key = b""
    data_keys: dict[int, bytes] = {}
    for key_id, purpose, wrapped in rows:
        key = crypto.unwrap_key(keys.kek, keys.log_id, key_id, purpose, wrapped)
        if purpose == INDEX_PURPOSE:
            index_key = key
        else:
            data_keys[key_id] = key
    if not index_key:
        raise crypto.AuthError("the index key is missing")
    return index_key, data_keys


def check_key_matches(meta: dict[str, bytes], keys: KeyMaterial) -> None:
    """Tell a wrong key file apart from a tampered log before anything else."""
    if meta.get("log_id") != keys.log_id:
        found = meta.get("log_id", b"").hex()
        raise KeyFileError(
            f"the key file belongs to log {keys.log_id.hex()}, but this data dir holds log {found};"
            " pass the key file that `init` wrote for this data dir"
        )
    if not crypto.hmac_equal(meta.get("kek_check", b""), crypto.kek_check(keys.kek, keys.log_id)):
        raise KeyFileError("the key file does not match this data dir (wrong key-encryption key)")


def frontier_bytes(frontier: merkle.Frontier) -> bytes:
    """Serialise the right edge of the tree: size (u64) then its subtree hashes."""
    return frontier.size.to_bytes(8, "big") + b"".join(frontier.hashes)


def frontier_from_bytes(data: bytes) -> merkle.Frontier:
    size = int.from_bytes(data[:8], "big")
    body = data[8:]
    hashes = [body[i : i + format.HASH_BYTES] for i in range(0, len(body), format.HASH_BYTES)]
    return merkle.Frontier.from_hashes(size, hashes)


def conversation_tag(index_key: bytes, source: str, conversation: str) -> bytes:
    return crypto.keyed_tag(index_key, "conversation", source, conversation)


def dedup_tag(index_key: bytes, source: str, conversation: str, event_id: str) -> bytes:
    return crypto.keyed_tag(index_key, "event", source, conversation, event_id)


def cursor_mac(index_key: bytes, name: str, value: str) -> bytes:
    """Keyed tag over a source cursor: an altered sync token must not silently skip events."""
    return crypto.keyed_tag(index_key, "cursor", name, value)
