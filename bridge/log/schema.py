"""The on-disk layout of a log: schema, creation, key unwrapping, index tags (pure helpers + init).

Shared by the writer (`store`), the offline verifier (`verify`) and the read-only
reader (`reader`), none of which may trust the others' in-memory state.
"""

from __future__ import annotations

import base64
import binascii
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

from bridge.clock import now_ms
from bridge.errors import Check, KeyFileError, LogIntegrityError, StorageError, UsageError
from bridge.log import checkpoint, crypto, db, format, merkle
from bridge.log.clear import KeyRecord
from bridge.log.keys import KeyMaterial

DB_NAME = db.SQLITE_NAME
SCHEMA_VERSION = 3
#: Every schema a reader accepts (verify checks the layout of the version the meta table claims); the writer
#: migrates an older one at open (`bridge.log.migrations`). Schema 1 is refused (see `check_schema_version`).
READABLE_VERSIONS = (2, 3)

#: Records per epoch of the dedup index (2^EPOCH_BITS): schema 3 keeps each tag unique within its epoch,
#: `(seq >> EPOCH_BITS, dedup)`, so inserts land in the current epoch's small, cached corner of the index
#: instead of anywhere in one global random-order index (which rewrote most of its pages at every commit:
#: import slowed down as the log grew). Uniqueness across epochs is the writer's in-memory tag filter plus a
#: probe of every epoch for the filter's hits (`bridge.log.dedup`), and `verify`'s duplicate-tag check.
EPOCH_BITS = db.EPOCH_BITS

#: Rotation records are found by the prefix of their dedup entry (`rotation.ROTATION_ROWS_SQL`, whose WHERE
#: clause this partial index repeats word for word so both SQLite and PostgreSQL use it).
_ROTATION_WHERE = "dedup >= x'766b657900' AND dedup < x'766b657901'"

_TABLES = """
CREATE TABLE meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE keys (
    key_id INTEGER PRIMARY KEY, purpose TEXT NOT NULL, created_ms INTEGER NOT NULL, wrapped BLOB NOT NULL,
    seq INTEGER NOT NULL UNIQUE);
{records}
CREATE TABLE checkpoints (
    size INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL, note TEXT NOT NULL, frontier BLOB NOT NULL);
CREATE TABLE cursors (
    name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_ms INTEGER NOT NULL, mac BLOB NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

RECORDS_V2 = """CREATE TABLE records (
    seq INTEGER PRIMARY KEY, dedup BLOB NOT NULL UNIQUE, header BLOB NOT NULL,
    commitment BLOB NOT NULL, body BLOB NOT NULL, leaf BLOB NOT NULL);"""

RECORDS_V3 = """CREATE TABLE records (
    seq INTEGER PRIMARY KEY, dedup BLOB NOT NULL, header BLOB NOT NULL,
    commitment BLOB NOT NULL, body BLOB NOT NULL, leaf BLOB NOT NULL);"""

#: The append-only triggers of `records` (SQLite drops them with the table; a migration re-creates them).
RECORDS_TRIGGERS = """
CREATE TRIGGER records_no_update BEFORE UPDATE ON records BEGIN SELECT RAISE(ABORT, 'append-only'); END;
CREATE TRIGGER records_no_delete BEFORE DELETE ON records BEGIN SELECT RAISE(ABORT, 'append-only'); END;
"""

#: Schema 3's indexes on `records` (SQLite; PostgreSQL's are in `db.PG_INDEXES_V3`).
RECORDS_INDEXES_V3 = f"""
CREATE UNIQUE INDEX records_dedup ON records (seq >> {EPOCH_BITS}, dedup);
CREATE INDEX records_rotation ON records (dedup) WHERE {_ROTATION_WHERE};
"""

_CHECKPOINT_TRIGGERS = """
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'append-only'); END;
CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'append-only'); END;
"""

#: The layout of schema 2 (kept: verify checks a log not yet migrated, tests build one to migrate).
SCHEMA_V2 = _TABLES.format(records=RECORDS_V2) + RECORDS_TRIGGERS + _CHECKPOINT_TRIGGERS
_SCHEMA = _TABLES.format(records=RECORDS_V3) + RECORDS_INDEXES_V3 + RECORDS_TRIGGERS + _CHECKPOINT_TRIGGERS
_SCHEMAS = {2: SCHEMA_V2, 3: _SCHEMA}


def epoch_of(seq: int) -> int:
    """The dedup index's epoch of a record position (schema 3)."""
    return seq >> EPOCH_BITS


def schema_version_of(meta: dict[str, bytes]) -> int | None:
    """The schema version the meta table claims, if it is one this version reads."""
    try:
        version = int(meta.get("schema_version", b"").decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return version if version in READABLE_VERSIONS else None


def expected_schema(version: int = SCHEMA_VERSION) -> list[tuple[str, str, str, str | None]]:
    """(type, name, table, sql) of every schema object a log of `version` holds, sorted: what `verify` compares
    against (the layout of the version the meta table claims; a version this code does not read: the current)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(_SCHEMAS.get(version, _SCHEMA))
        return sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
    finally:
        conn.close()


#: Records a new log starts with: the KEY records of the index key (seq 0) and of data key 1 (seq 1).
INIT_RECORDS = 2

#: Every entry of the `meta` table (verify refuses others).
META_KEYS = ("schema_version", "log_id", "vkey", "kek_check")

INDEX_PURPOSE = "index"
DATA_PURPOSE = "data"


def db_path(data_dir: Path) -> Path:
    return data_dir / DB_NAME


#: Page size of a new log: a 4 KiB page holds two ~1.4 KB records with much space left over, a 16 KiB page
#: eleven, so a commit writes fewer pages (measured in bench/ingest.py). Fixed at creation (WAL cannot change it).
PAGE_SIZE = 16384


def _connect_sync(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # only takes effect on a new, empty database
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def initialise(data_dir: Path, keys: KeyMaterial, pg: db.PgTarget | None = None) -> None:
    """Create a log in `data_dir` (which must not hold one already); with `pg`, in that PostgreSQL schema
    (which must hold no log tables) and a marker naming it in `data_dir`.

    The log starts with two KEY records (seq 0: the index key, seq 1: data key 1)
    and a checkpoint over them, so the wrapped keys are under the proof from the
    first byte and a fresh log verifies keyless.
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if db.backend_of(data_dir) is not None:
        raise UsageError(f"{data_dir} already holds a log; refusing to overwrite an existing log")
    if pg is not None:
        _initialise_pg(data_dir, keys, pg)
        return
    conn = _connect_sync(db_path(data_dir))
    try:
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN")
        for sql, params in _first_rows(keys):
            conn.execute(sql, params)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _initialise_pg(data_dir: Path, keys: KeyMaterial, pg: db.PgTarget) -> None:
    import psycopg  # only here: opening a SQLite log never loads it

    conn = db.pg_connect(pg, app="chatarchief-init")
    try:
        if not db.pg_is_empty(conn):
            raise UsageError(f"{pg.describe()} already holds log tables; refusing to overwrite an existing log")
        with conn.transaction():
            conn.execute(db.PG_SCHEMA)
            for sql, params in _first_rows(keys):
                conn.execute(db.pg_sql(sql), params)
    except psycopg.Error as exc:
        raise StorageError(f"cannot create the log at {pg.describe()}: {str(exc).strip().splitlines()[0]}") from None
    finally:
        conn.close()
    db.write_marker(data_dir, pg)


def _first_rows(keys: KeyMaterial) -> list[tuple[str, Sequence[object]]]:
    """The rows a new log starts with: meta, the two KEY records with their key rows, a checkpoint."""
    created = now_ms()
    meta = {
        "schema_version": str(SCHEMA_VERSION).encode(),
        "log_id": keys.log_id,
        "vkey": keys.vkey().encode("ascii"),
        "kek_check": crypto.kek_check(keys.kek, keys.log_id),
    }
    out: list[tuple[str, Sequence[object]]] = [("INSERT INTO meta (k, v) VALUES (?, ?)", kv) for kv in meta.items()]
    frontier = merkle.Frontier()
    prev = format.GENESIS_PREV
    for key_id, purpose in ((0, INDEX_PURPOSE), (1, DATA_PURPOSE)):
        record = key_record(keys, key_id, purpose, crypto.random_key(), created)
        row = seal_key_record(record, frontier.size, created, prev)
        out.append((_INSERT_RECORD, row))
        out.append((_INSERT_KEY, key_row(record, frontier.size)))
        frontier.append(row[5])
        prev = row[5]
    out.append((_INSERT_CHECKPOINT, checkpoint_row(keys, frontier)))
    return out


_INSERT_RECORD = "INSERT INTO records (seq, dedup, header, commitment, body, leaf) VALUES (?, ?, ?, ?, ?, ?)"
_INSERT_KEY = "INSERT INTO keys (key_id, purpose, created_ms, wrapped, seq) VALUES (?, ?, ?, ?, ?)"
_INSERT_CHECKPOINT = "INSERT INTO checkpoints (size, created_ms, note, frontier) VALUES (?, ?, ?, ?)"

#: A row of `records`: (seq, dedup tag, header, commitment, body, leaf).
RecordRow = tuple[int, bytes, bytes, bytes, bytes, bytes]


def key_record(keys: KeyMaterial, key_id: int, purpose: str, key: bytes, created_ms: int) -> KeyRecord:
    """The KEY record of a fresh key: wrapped under the KEK (AD binds log id, key id, purpose)."""
    return KeyRecord(key_id, purpose, created_ms, crypto.wrap_key(keys.kek, keys.log_id, key_id, purpose, key))


def key_dedup(key_id: int) -> bytes:
    """Dedup column of a KEY record: not keyed (there is one record per key id, and no secret to hide)."""
    return b"key\x00" + key_id.to_bytes(8, "big")


def seal_key_record(record: KeyRecord, seq: int, appended_ms: int, prev_leaf: bytes) -> RecordRow:
    header, commit, body, leaf = format.seal_clear(
        format.RecordType.KEY, seq, appended_ms, record.key_id, prev_leaf, os.urandom(crypto.SALT_BYTES),
        record.encode(),
    )  # fmt: skip
    return (seq, key_dedup(record.key_id), header, commit, body, leaf)


def key_row(record: KeyRecord, seq: int) -> tuple[int, str, int, bytes, int]:
    return (record.key_id, record.purpose, record.created_ms, record.wrapped, seq)


def checkpoint_row(keys: KeyMaterial, frontier: merkle.Frontier) -> tuple[int, int, str, bytes]:
    """Sign a checkpoint of `frontier` now: the `checkpoints` row (size, created ms, note, frontier)."""
    created = now_ms()
    name = keys.key_name
    cp = checkpoint.Checkpoint(origin=name, size=frontier.size, root=frontier.root(), timestamp_ms=created)
    return (cp.size, created, checkpoint.sign_checkpoint(cp, name, keys.signing_key), frontier_bytes(frontier))


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


def meta_dict(rows: Iterable[tuple[object, object]]) -> dict[str, bytes]:
    """The `meta` table as {key: bytes}; a value of another SQL type is tampering, not a crash."""
    out: dict[str, bytes] = {}
    for k, v in rows:
        if not isinstance(v, bytes | memoryview):
            raise LogIntegrityError(
                None,
                f"the meta table was altered: entry {str(k)[:40]!r} is not a byte string",
                "bytes",
                type(v).__name__,
                check=Check.META,
            )
        out[str(k)] = bytes(v)
    return out


def check_key_matches(
    meta: dict[str, bytes], keys: KeyMaterial, wrapped: Sequence[tuple[int, str, bytes]] = ()
) -> None:
    """Tell a wrong key file (UsageError, exit 2) apart from a tampered log (exit 1) before anything else.

    `wrapped` are (key id, purpose, wrapped key) rows of the log: when the meta
    entries disagree with the key file yet one of these unwraps under it (the
    AEAD binds log id, key id and purpose), the key file is right and the meta
    table was altered.
    """
    log_ok = meta.get("log_id") == keys.log_id
    kek_ok = log_ok and crypto.hmac_equal(meta.get("kek_check", b""), crypto.kek_check(keys.kek, keys.log_id))
    if kek_ok:
        return
    for key_id, purpose, blob in wrapped:
        try:
            crypto.unwrap_key(keys.kek, keys.log_id, key_id, purpose, blob)
        except crypto.AuthError:
            continue
        what = "log id" if not log_ok else "key check value"
        raise LogIntegrityError(
            None, f"the meta table was altered: its {what} does not match the log's own keys", check=Check.META
        )
    if not log_ok:
        found = meta.get("log_id", b"").hex()
        raise KeyFileError(
            f"the key file belongs to log {keys.log_id.hex()}, but this data dir holds log {found};"
            " pass the key file that `init` wrote for this data dir"
        )
    raise KeyFileError("the key file does not match this data dir (wrong key-encryption key)")


def check_schema_version(conn: db.ReadConnection, meta: dict[str, bytes]) -> None:
    """Readers' guard: a log of schema 1 (an earlier development version: no KEY records under the proof, no
    stored tree edges) is refused as such (UsageError, exit 2: re-create and re-import), not reported as
    damage; every version in `READABLE_VERSIONS` is read (a schema-2 log not yet opened by a writer of this
    version, which migrates it, is read as it is: `db.schema_objects` expects the layout of the version
    claimed); any other version entry is tampering (exit 1)."""
    version = meta.get("schema_version")
    if schema_version_of(meta) is not None:
        return  # its layout is checked against this version's (`db.schema_objects`)
    # Schema 1 only ever existed in SQLite (a PostgreSQL log starts at schema 2).
    sqlite = isinstance(conn, sqlite3.Connection)
    columns = {str(r[1]) for r in conn.execute("PRAGMA table_info(checkpoints)")} if sqlite else {"frontier"}
    if version == b"1" and "frontier" not in columns:
        raise UsageError(
            "this log was written by an earlier development version of Chatarchief (log schema 1), which this"
            f" version does not read (it writes schema {SCHEMA_VERSION}); re-create the log (`chatarchief init`)"
            " and re-import its events"
        )
    raise LogIntegrityError(
        None,
        "the meta table was altered: its schema version is not the one of this log's layout",
        str(SCHEMA_VERSION),
        repr(version),
        check=Check.META,
    )


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


_CURSOR_PREFIX = "enc1:"
_CURSOR_DOMAIN = b"chatarchief/v1/cursor\x00"


def seal_cursor(index_key: bytes, name: str, value: str) -> str:
    """A cursor value as stored: AES-256-GCM under a key derived from the index key (a source's cursor may hold
    room, event and session ids, which are never in the clear at rest), base64 text with a version prefix."""
    nonce = crypto.random_nonce()
    body = crypto.seal(_cursor_key(index_key), nonce, value.encode("utf-8", "surrogatepass"), _cursor_ad(name))
    return _CURSOR_PREFIX + base64.b64encode(nonce + body).decode("ascii")


def open_cursor(index_key: bytes, name: str, stored: object) -> str:
    """The cursor value from its stored form; raises crypto.AuthError for anything we did not seal."""
    if not isinstance(stored, str) or not stored.startswith(_CURSOR_PREFIX):
        raise crypto.AuthError("cursor is not sealed")
    try:
        raw = base64.b64decode(stored[len(_CURSOR_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise crypto.AuthError("cursor is not base64") from None
    nonce, body = raw[: crypto.NONCE_BYTES], raw[crypto.NONCE_BYTES :]
    plain = crypto.open_sealed(_cursor_key(index_key), nonce, body, _cursor_ad(name))
    return plain.decode("utf-8", "surrogatepass")


def _cursor_key(index_key: bytes) -> bytes:
    return crypto.keyed_tag(index_key, "cursor-encryption", length=32)


def _cursor_ad(name: str) -> bytes:
    return _CURSOR_DOMAIN + name.encode("utf-8", "surrogatepass")


def cursor_mac(index_key: bytes, name: str, value: str) -> bytes:
    """Keyed tag over a source cursor: an altered sync token must not silently skip events."""
    return crypto.keyed_tag(index_key, "cursor", name, value)
