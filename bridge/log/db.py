"""Where a log lives: SQLite in the data dir, or PostgreSQL (the only module that knows both dialects).

Contract
--------
A data dir holds either `log.sqlite3` (the log itself) or `log.postgresql`, a
marker naming the PostgreSQL log: its DSN without a password and the path of
the password file (JSON, 0600). `locate(data_dir)` says which; every reader
(`verify`, the reader, the view) and the writer open their connections here
and keep writing SQLite's SQL with `?` placeholders: `pg_sql` translates it
for psycopg once per statement (placeholders, `x'..'` literals, `BEGIN
IMMEDIATE`). The few real differences (schema text, the schema check,
integrity check, the single-writer lock) live here.

PostgreSQL specifics:
- one log per database schema (the DSN's `options=-csearch_path=...`, else
  `public`); tables as in SQLite with BYTEA/BIGINT; triggers raise on UPDATE,
  DELETE and TRUNCATE of `records` and `checkpoints` (an accident guard, as in
  SQLite: the boundary is `verify`; docs/postgresql.md grants the bot's role
  INSERT/SELECT only).
- the single-writer lock is a session advisory lock taken on the writer's own
  connection (`pg_try_advisory_lock`): held exactly as long as the session
  that writes, so a writer whose session died (SIGKILL, host gone) can write
  nothing more, and a standby on another host takes the lock over.
- media: the encrypted blob files of `DATA_DIR/blobs/` are also kept, byte for byte, in the `blobs` table
  (written on the writer's side session before the BLOB record that names them commits), and a writer
  opening the log writes any blob its data dir lacks (never overwriting one): a standby on another host
  has every file. `verify` checks the files against their BLOB records as for SQLite.
- readers use `default_transaction_read_only` and stream long scans through
  server-side cursors; `BEGIN` on a reader starts a REPEATABLE READ snapshot
  (SQLite's read transaction), `COMMIT` ends it.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import json
import os
import re
import socket
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import aiosqlite

from bridge.durable import fsync_dir, write_atomic
from bridge.errors import StorageError, UsageError

if TYPE_CHECKING:  # psycopg is imported only where a PostgreSQL log is opened (the SQLite read path never loads it)
    import psycopg

SQLITE_NAME = "log.sqlite3"
MARKER_NAME = "log.postgresql"
SQLITE = "sqlite"
POSTGRESQL = "postgresql"

#: The advisory lock of a log's writer: (class id "CHAT", hash of the log's schema name).
LOCK_CLASS = 0x43484154
_LOCK_SQL = f"SELECT pg_try_advisory_lock({LOCK_CLASS}, hashtext(current_schema()))"

#: Records per epoch of schema 3's dedup index: 2^EPOCH_BITS (why: `schema.EPOCH_BITS`). Part of the layout.
EPOCH_BITS = 16

PG_SCHEMA_V2 = """
CREATE TABLE meta (k TEXT PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE keys (
    key_id BIGINT PRIMARY KEY, purpose TEXT NOT NULL, created_ms BIGINT NOT NULL, wrapped BYTEA NOT NULL,
    seq BIGINT NOT NULL UNIQUE);
CREATE TABLE records (
    seq BIGINT PRIMARY KEY, dedup BYTEA NOT NULL UNIQUE, header BYTEA NOT NULL,
    commitment BYTEA NOT NULL, body BYTEA NOT NULL, leaf BYTEA NOT NULL);
CREATE TABLE checkpoints (
    size BIGINT PRIMARY KEY, created_ms BIGINT NOT NULL, note TEXT NOT NULL, frontier BYTEA NOT NULL);
CREATE TABLE cursors (
    name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_ms BIGINT NOT NULL, mac BYTEA NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE blobs (blob_id TEXT PRIMARY KEY, data BYTEA NOT NULL);
CREATE FUNCTION chatarchief_append_only() RETURNS trigger LANGUAGE plpgsql
    AS $$BEGIN RAISE EXCEPTION 'append-only'; END$$;
CREATE TRIGGER records_no_update BEFORE UPDATE ON records
    FOR EACH ROW EXECUTE FUNCTION chatarchief_append_only();
CREATE TRIGGER records_no_delete BEFORE DELETE ON records
    FOR EACH ROW EXECUTE FUNCTION chatarchief_append_only();
CREATE TRIGGER records_no_truncate BEFORE TRUNCATE ON records
    FOR EACH STATEMENT EXECUTE FUNCTION chatarchief_append_only();
CREATE TRIGGER blobs_no_update BEFORE UPDATE ON blobs
    FOR EACH ROW EXECUTE FUNCTION chatarchief_append_only();
CREATE TRIGGER blobs_no_delete BEFORE DELETE ON blobs
    FOR EACH ROW EXECUTE FUNCTION chatarchief_append_only();
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION chatarchief_append_only();
CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION chatarchief_append_only();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION chatarchief_append_only();
"""

#: Schema 3 (see `schema.EPOCH_BITS`): the dedup tag unique per epoch of seq, not across the whole log (inserts
#: stay in the current epoch's corner of the index), and a partial index for the rotation records' prefix.
PG_INDEXES_V3 = f"""
CREATE UNIQUE INDEX records_dedup ON records ((seq >> {EPOCH_BITS}), dedup);
CREATE INDEX records_rotation ON records (dedup)
    WHERE dedup >= '\\x766b657900'::bytea AND dedup < '\\x766b657901'::bytea;
"""
PG_SCHEMA = PG_SCHEMA_V2.replace("dedup BYTEA NOT NULL UNIQUE", "dedup BYTEA NOT NULL") + PG_INDEXES_V3
#: How `pg_indexes.indexdef` spells schema 3's indexes (schema prefix removed), for `verify`'s schema check.
_PG_INDEXDEFS_V3 = (
    ("records_dedup", f"CREATE UNIQUE INDEX records_dedup ON records USING btree (((seq >> {EPOCH_BITS})), dedup)"),
    (
        "records_rotation",
        "CREATE INDEX records_rotation ON records USING btree (dedup)"
        " WHERE ((dedup >= '\\x766b657900'::bytea) AND (dedup < '\\x766b657901'::bytea))",
    ),
)

TABLES = ("meta", "keys", "records", "checkpoints", "cursors", "counters", "blobs")


# -- where the log is ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PgTarget:
    """A PostgreSQL log: DSN without a password, and the file holding the password (if any)."""

    dsn: str
    password_file: Path | None = None

    @classmethod
    def checked(cls, dsn: str, password_file: Path | None) -> PgTarget:
        """Refuse a DSN that does not parse or carries a password (it belongs in the password file)."""
        import psycopg
        from psycopg import conninfo

        try:
            parts = conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise UsageError(f"storage.dsn does not parse: {str(exc).splitlines()[0]}") from None
        if "password" in parts:
            raise UsageError("storage.dsn holds a password: put it in storage.password_file (mode 0600) instead")
        return cls(dsn, password_file)

    def connect_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.password_file is not None:
            try:
                args["password"] = self.password_file.read_text("utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(f"cannot read storage.password_file {self.password_file}: {exc}") from None
        return args

    def describe(self) -> str:
        """Host, port, database and schema, for messages (never the password)."""
        from psycopg import conninfo

        parts = conninfo.conninfo_to_dict(self.dsn)
        where = f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"
        options = str(parts.get("options", ""))
        found = re.search(r"search_path=([\w,]+)", options)
        return f"postgresql://{where}" + (f" (schema {found.group(1)})" if found else "")


def sqlite_path(data_dir: Path) -> Path:
    return data_dir / SQLITE_NAME


def marker_path(data_dir: Path) -> Path:
    return data_dir / MARKER_NAME


def write_marker(data_dir: Path, target: PgTarget) -> None:
    data = {"dsn": target.dsn, "password_file": None if target.password_file is None else str(target.password_file)}
    path = marker_path(data_dir)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(data_dir)


def read_marker(data_dir: Path) -> PgTarget:
    path = marker_path(data_dir)
    try:
        data = json.loads(path.read_text("utf-8"))
        dsn, pw = data["dsn"], data.get("password_file")
        if not isinstance(dsn, str) or not (pw is None or isinstance(pw, str)):
            raise TypeError("dsn must be text, password_file text or null")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path} is not a readable PostgreSQL log marker: {exc}") from None
    return PgTarget.checked(dsn, None if pw is None else Path(pw))


def backend_of(data_dir: Path) -> str | None:
    """ "sqlite", "postgresql", or None when the data dir holds no log."""
    if sqlite_path(data_dir).exists():
        return SQLITE
    if marker_path(data_dir).exists():
        return POSTGRESQL
    return None


def locate(data_dir: Path) -> Path | PgTarget:
    """The SQLite file or the PostgreSQL log of `data_dir`; UsageError when it holds none."""
    backend = backend_of(data_dir)
    if backend == SQLITE:
        return sqlite_path(data_dir)
    if backend == POSTGRESQL:
        return read_marker(data_dir)
    raise UsageError(f"no log in {data_dir}; create one with `chatarchief init` (is --data-dir right?)")


def check_configured(data_dir: Path, backend: str, target: PgTarget | None) -> None:
    """The config's [storage] backend/dsn must name the log the data dir holds (exit 2 otherwise)."""
    found = backend_of(data_dir)
    if found is None:
        return
    if found != backend:
        raise UsageError(f"the config says storage.backend = {backend!r}, but {data_dir} holds a {found} log")
    if target is not None:
        from psycopg import conninfo  # only for a PostgreSQL log: psycopg is not loaded over SQLite

        marker = read_marker(data_dir)
        if conninfo.conninfo_to_dict(marker.dsn) != conninfo.conninfo_to_dict(target.dsn):
            raise UsageError(
                f"the config's storage.dsn ({target.describe()}) is not the log of {data_dir} ({marker.describe()})"
            )


# -- SQL dialect -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def pg_sql(sql: str) -> str:
    """SQLite's SQL as the log writes it, for psycopg: `?` -> `%s`, `x'03'` -> bytea, BEGIN IMMEDIATE -> BEGIN."""
    out = sql.replace("%", "%%").replace("?", "%s")
    out = re.sub(r"\bx'([0-9a-fA-F]*)'", r"'\\x\1'::bytea", out)
    return out.replace("BEGIN IMMEDIATE", "BEGIN")


def _streams(sql: str) -> bool:
    """A scan in log order without a limit: read it through a server-side cursor (bounded memory)."""
    return sql.lstrip().upper().startswith("SELECT") and "ORDER BY SEQ" in sql.upper() and "LIMIT" not in sql.upper()


# -- sync read-only connections --------------------------------------------------------------------


class Rows(Protocol):
    def fetchone(self) -> Any: ...
    def fetchmany(self, size: int = ...) -> list[Any]: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class ReadConnection(Protocol):
    """What readers use: sqlite3.Connection, or `PgReader` (the same calls)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Rows: ...
    def close(self) -> None: ...


class PgReader:
    """A read-only PostgreSQL session behaving like a read-only sqlite3 connection for the log's readers."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._names = 0

    @classmethod
    def connect(cls, target: PgTarget) -> PgReader:
        import psycopg

        try:
            conn = psycopg.connect(target.dsn, **target.connect_args(), application_name="chatarchief-reader")
            conn.read_only = True
            conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        except psycopg.Error as exc:
            raise StorageError(f"cannot reach the log at {target.describe()}: {_first_line(exc)}") from None
        return cls(conn)

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Rows:
        import psycopg

        word = sql.strip().upper()
        try:
            if word in ("BEGIN", "COMMIT", "ROLLBACK"):
                self._conn.commit()  # a read-only transaction: nothing to commit, it ends the snapshot
                self._conn.isolation_level = (
                    psycopg.IsolationLevel.REPEATABLE_READ if word == "BEGIN" else psycopg.IsolationLevel.READ_COMMITTED
                )
                return self._conn.cursor()
            if _streams(sql):
                self._names += 1
                named = self._conn.cursor(name=f"chatarchief_scan_{self._names}")
                named.itersize = 2048
                named.execute(pg_sql(sql), parameters)
                return _Streamed(named)
            return self._conn.execute(pg_sql(sql), parameters)
        except psycopg.Error as exc:
            raise StorageError(f"could not read the log: {_first_line(exc)}") from None

    def close(self) -> None:
        self._conn.close()

    @property
    def raw(self) -> psycopg.Connection[Any]:
        return self._conn


class _Streamed:
    """A server-side cursor whose fetches (network reads) fail as StorageError, like `execute` does."""

    def __init__(self, cur: psycopg.ServerCursor[Any]) -> None:
        self._cur = cur

    def fetchone(self) -> Any:
        return self._guarded(self._cur.fetchone)

    def fetchmany(self, size: int = 0) -> list[Any]:
        rows: list[Any] = self._guarded(lambda: self._cur.fetchmany(size))
        return rows

    def fetchall(self) -> list[Any]:
        rows: list[Any] = self._guarded(self._cur.fetchall)
        return rows

    def __iter__(self) -> Iterator[Any]:
        while rows := self.fetchmany(self._cur.itersize):
            yield from rows

    @staticmethod
    def _guarded(fn: Callable[[], Any]) -> Any:
        import psycopg

        try:
            return fn()
        except psycopg.Error as exc:
            raise StorageError(f"could not read the log: {_first_line(exc)}") from None


def open_readonly(data_dir: Path) -> ReadConnection:
    """A read-only connection to the log of `data_dir` (SQLite's is opened by `verify.open_readonly`)."""
    where = locate(data_dir)
    assert isinstance(where, PgTarget)
    return PgReader.connect(where)


# -- the async writer connection -------------------------------------------------------------------


class AsyncRows(Protocol):
    async def fetchone(self) -> Any: ...
    async def fetchmany(self, size: int = ...) -> Iterable[Any]: ...
    async def fetchall(self) -> Iterable[Any]: ...
    def __aiter__(self) -> AsyncIterator[Any]: ...


class Statement:
    """An executed statement: `await conn.execute(...)` or `async with conn.execute(...) as cur:`."""

    def __init__(self, run: Callable[[], Awaitable[AsyncRows]]) -> None:
        self._run = run
        self._cur: AsyncRows | None = None

    def __await__(self) -> Generator[Any, None, AsyncRows]:
        return self._run().__await__()

    async def __aenter__(self) -> AsyncRows:
        self._cur = await self._run()
        return self._cur

    async def __aexit__(self, *exc: object) -> None:
        close = getattr(self._cur, "close", None)
        if close is not None:
            await close()


class Writer(abc.ABC):
    """The writer's connection: SQLite (aiosqlite) or PostgreSQL (psycopg async), one interface."""

    #: Exceptions of this backend that mean "the database refused or failed".
    errors: tuple[type[BaseException], ...] = ()
    backend = SQLITE

    @abc.abstractmethod
    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Statement: ...

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


T = TypeVar("T")


class SqliteWriter(Writer):
    errors = (sqlite3.Error,)

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    @property
    def runs_calls(self) -> bool:
        """Whether `run` can hand a call to the connection's thread. aiosqlite has no public call for it; the
        private `Connection._execute` (which every one of its methods uses) and `_conn` are there from 0.17
        through 0.22 (constraints.txt pins 0.22.1). Without them the writer takes the public path (a statement
        per hand-over, as on PostgreSQL): slower, the same rows."""
        return callable(getattr(self.conn, "_execute", None)) and isinstance(
            getattr(self.conn, "_conn", None), sqlite3.Connection
        )

    async def run(self, call: Callable[[sqlite3.Connection], T]) -> T:
        """`call(connection)` on the connection's own thread, in order with the statements handed to it
        before (only when `runs_calls`)."""
        conn: sqlite3.Connection = self.conn._conn
        result: T = await self.conn._execute(lambda: call(conn))  # type: ignore[no-untyped-call]
        return result

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Statement:
        async def run() -> AsyncRows:
            cur: AsyncRows = await self.conn.execute(sql, parameters)
            return cur

        return Statement(run)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.conn.executemany(sql, rows)

    async def close(self) -> None:
        await self.conn.close()


class PgWriter(Writer):
    backend = POSTGRESQL

    def __init__(self, conn: psycopg.AsyncConnection[Any], target: PgTarget) -> None:
        import psycopg

        self.errors = (psycopg.Error,)
        self.conn = conn
        self.target = target

    @classmethod
    async def connect(cls, target: PgTarget, name: str = "writer") -> PgWriter:
        import psycopg

        app = f"chatarchief-{name} {socket.gethostname()} pid {os.getpid()}"[:63]
        try:
            conn = await psycopg.AsyncConnection.connect(
                target.dsn, **target.connect_args(), autocommit=True, application_name=app
            )
        except psycopg.Error as exc:
            raise StorageError(f"cannot reach the log at {target.describe()}: {_first_line(exc)}") from None
        return cls(conn, target)

    async def take_lock(self, data_dir: Path) -> None:
        """The single-writer lock (session advisory lock); WriterBusy naming the holder when taken."""
        import psycopg

        try:
            cur = await self.conn.execute(_LOCK_SQL)
            row = await cur.fetchone()
            if row is not None and row[0] is True:
                return
            holder = await self._holder()
        except psycopg.Error as exc:
            raise StorageError(f"cannot take the writer lock at {self.target.describe()}: {_first_line(exc)}") from None
        raise PgWriterBusy(data_dir, self.target, holder)

    async def _holder(self) -> str | None:
        cur = await self.conn.execute(
            "SELECT a.application_name, a.client_addr::text FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::oid"
            " AND l.objid = hashtext(current_schema())::oid AND l.database = ("
            "SELECT oid FROM pg_database WHERE datname = current_database())",
            (LOCK_CLASS,),
        )
        row = await cur.fetchone()
        return None if row is None else f"{row[0]} from {row[1] or 'a local socket'}"

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Statement:
        async def run() -> AsyncRows:
            cur: AsyncRows = await self.conn.execute(pg_sql(sql), parameters)
            return cur

        return Statement(run)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self.conn.cursor() as cur:
            await cur.executemany(pg_sql(sql), list(rows))

    async def close(self) -> None:
        await self.conn.close()


class PgWriterBusy(UsageError):
    """Another session (another bot, maybe on another host) holds the log's writer lock. Not the data dir's
    `WriterBusy`: no bot in this data dir can take the work over its control socket."""

    def __init__(self, data_dir: Path, target: PgTarget, holder: str | None) -> None:
        super().__init__(
            f"the log at {target.describe()} is being written by {holder or 'another session'}"
            " (PostgreSQL advisory lock); stop it first, or run this bot as a standby"
        )
        self.data_dir = data_dir
        self.holder = holder


# -- dedup lookups beside the writer ---------------------------------------------------------------


class PgDedup:
    """The writer's side session: `existing(tags)` does not wait for the commit in flight (see dedup.py);
    `keep_blob`/`restore_blobs` move media between the data dir and the `blobs` table."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, target: PgTarget) -> PgDedup:
        import psycopg

        try:
            conn = await psycopg.AsyncConnection.connect(
                target.dsn, **target.connect_args(), autocommit=True, application_name="chatarchief-dedup"
            )
        except psycopg.Error as exc:
            raise StorageError(f"cannot reach the log at {target.describe()}: {_first_line(exc)}") from None
        return cls(conn)

    async def existing(self, tags: Sequence[bytes], last_epoch: int) -> set[bytes]:
        """The tags among `tags` a committed record holds, probing epochs 0..`last_epoch` (see dedup.py)."""
        import psycopg

        if not tags:
            return set()
        try:
            cur = await self._conn.execute(
                f"SELECT dedup FROM records WHERE (seq >> {EPOCH_BITS}) = ANY(%s) AND dedup = ANY(%s)",  # noqa: S608
                (list(range(last_epoch + 1)), list(set(tags))),
            )
            return {bytes(r[0]) for r in await cur.fetchall()}
        except psycopg.Error as exc:
            raise StorageError(f"could not read the log's dedup index: {_first_line(exc)}") from None

    async def epoch_tags(self, epoch: int) -> list[bytes]:
        """Every tag of one epoch (a range of the dedup index)."""
        import psycopg

        try:
            cur = await self._conn.execute(
                f"SELECT dedup FROM records WHERE (seq >> {EPOCH_BITS}) = %s",  # noqa: S608 - a constant
                (epoch,),
            )
            return [
                bytes(t) if isinstance(t, bytes | memoryview) else repr(t).encode() for (t,) in await cur.fetchall()
            ]
        except psycopg.Error as exc:
            raise StorageError(f"could not read the log's dedup index: {_first_line(exc)}") from None

    async def keep_blob(self, blob_id: str, data: bytes) -> None:
        """Keep an encrypted blob file's bytes in the log's database (durable on return; once per id)."""
        import psycopg

        try:
            await self._conn.execute(
                "INSERT INTO blobs (blob_id, data) VALUES (%s, %s) ON CONFLICT (blob_id) DO NOTHING", (blob_id, data)
            )
        except psycopg.Error as exc:
            raise StorageError(f"could not store a media blob in the log's database: {_first_line(exc)}") from None

    async def restore_blobs(self, root: Path) -> int:
        """Write every blob the database holds and `root` lacks (never overwrites a file); returns how many."""
        import psycopg

        try:
            cur = await self._conn.execute("SELECT blob_id FROM blobs")
            ids = [str(r[0]) for r in await cur.fetchall()]
            written = 0
            for blob_id in ids:
                path = root / blob_id[:2] / blob_id
                if len(blob_id) != 40 or not all(c in "0123456789abcdef" for c in blob_id):
                    raise StorageError(f"the log's blobs table holds a malformed blob id {blob_id[:60]!r}")
                if await asyncio.to_thread(path.exists):
                    continue
                cur = await self._conn.execute("SELECT data FROM blobs WHERE blob_id = %s", (blob_id,))
                row = await cur.fetchone()
                assert row is not None
                await asyncio.to_thread(_write_blob, path, bytes(row[0]))
                written += 1
            return written
        except psycopg.Error as exc:
            raise StorageError(f"could not read media blobs from the log's database: {_first_line(exc)}") from None

    async def close(self) -> None:
        await self._conn.close()


def _write_blob(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data)


# -- creating and checking the schema --------------------------------------------------------------


def pg_connect(target: PgTarget, *, app: str = "chatarchief") -> psycopg.Connection[Any]:
    """A plain sync session (autocommit) for `init` and `migrate-store`."""
    import psycopg

    try:
        return psycopg.connect(target.dsn, **target.connect_args(), autocommit=True, application_name=app)
    except psycopg.Error as exc:
        raise StorageError(f"cannot reach the log at {target.describe()}: {_first_line(exc)}") from None


def pg_is_empty(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ANY(%s)",
        (list(TABLES),),
    ).fetchone()
    return row is not None and int(row[0]) == 0


#: What a PostgreSQL log's schema is (compared by `verify`): (kind, name, table, definition).
def _pg_found(conn: ReadConnection) -> list[tuple[str, str, str, str | None]]:
    found: list[tuple[str, str, str, str | None]] = []
    for table, column, dtype, nullable, default in conn.execute(
        "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns"
        " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
    ):
        found.append(("column", f"{table}.{column}", str(table), f"{dtype} null={nullable} default={default}"))
    for table, name, definition in conn.execute(
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
    ):
        found.append(("index", str(name), str(table), re.sub(r"ON \w+\.", "ON ", str(definition))))
    for table, name, tgtype, func in conn.execute(
        "SELECT c.relname, t.tgname, t.tgtype, p.proname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE NOT t.tgisinternal AND n.nspname = current_schema()"
    ):
        found.append(("trigger", str(name), str(table), f"type {tgtype} calls {func}"))
    for name, source in conn.execute(
        "SELECT p.proname, p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = current_schema()"
    ):
        found.append(("function", str(name), "", str(source)))
    return sorted(found, key=lambda r: (r[0], r[1]))


def _pg_expected(version: int) -> list[tuple[str, str, str, str | None]]:
    types = {"TEXT": "text", "BYTEA": "bytea", "BIGINT": "bigint"}
    out: list[tuple[str, str, str, str | None]] = []
    ddl = pg_schema(version)
    if version != 2:
        out += [("index", name, "records", definition) for name, definition in _PG_INDEXDEFS_V3]
    for table, body in re.findall(r"CREATE TABLE (\w+) \((.*?)\);", ddl, re.S):
        for column_def in body.split(","):
            words = column_def.split()
            out.append(("column", f"{table}.{words[0]}", table, f"{types[words[1]]} null=NO default=None"))
            if "PRIMARY" in words:
                out.append(
                    (
                        "index",
                        f"{table}_pkey",
                        table,
                        f"CREATE UNIQUE INDEX {table}_pkey ON {table} USING btree ({words[0]})",
                    )
                )
            if "UNIQUE" in words:
                name = f"{table}_{words[0]}_key"
                out.append(("index", name, table, f"CREATE UNIQUE INDEX {name} ON {table} USING btree ({words[0]})"))
    # tgtype bits: 1 row, 2 before, 8 delete, 16 update, 32 truncate
    kinds = {"update": 1 | 2 | 16, "delete": 1 | 2 | 8, "truncate": 2 | 32}
    for name, table, kind in re.findall(r"CREATE TRIGGER ((\w+)_no_(\w+))", PG_SCHEMA):
        out.append(("trigger", name, table, f"type {kinds[kind]} calls chatarchief_append_only"))
    out.append(("function", "chatarchief_append_only", "", "BEGIN RAISE EXCEPTION 'append-only'; END"))
    return sorted(out, key=lambda r: (r[0], r[1]))


def schema_objects(
    conn: ReadConnection,
) -> tuple[list[tuple[str, str, str, str | None]], list[tuple[str, str, str, str | None]]]:
    """(expected, found) schema objects of the log `conn` reads, in the dialect of its backend."""
    version = claimed_version(conn)
    if isinstance(conn, PgReader):
        return _pg_expected(version), _pg_found(conn)
    from bridge.log.schema import expected_schema

    found = [(str(t), str(n), str(tbl), sql) for t, n, tbl, sql in conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master")]  # fmt: skip
    return expected_schema(version), found


def pg_schema(version: int) -> str:
    """The PostgreSQL DDL of a log of schema `version` (2, or the current layout)."""
    return PG_SCHEMA_V2 if version == 2 else PG_SCHEMA


def claimed_version(conn: ReadConnection) -> int:
    """The schema version the meta table claims (0 when it claims none this code knows: the current layout is
    then expected, and `schema.check_schema_version` names the lie)."""
    try:
        row = conn.execute("SELECT v FROM meta WHERE k = 'schema_version'").fetchone()
        return int(bytes(row[0]).decode("ascii")) if row is not None else 0
    except (TypeError, ValueError, UnicodeDecodeError):
        return 0


#: A dedup tag held by two records. Schema 2's UNIQUE index made that impossible without changing the schema;
#: schema 3 keeps tags unique per epoch only (`schema.EPOCH_BITS`), so verify looks across epochs here.
_DUPLICATE_TAGS_SQL = "SELECT count(*) FROM (SELECT dedup FROM records GROUP BY dedup HAVING count(*) > 1) AS d"


def _epochs(conn: ReadConnection) -> int:
    """How many epochs of the dedup index the records span, from the lowest seq to the highest (0: none)."""
    row = conn.execute("SELECT min(seq), max(seq) FROM records").fetchone()
    if row is None or not isinstance(row[0], int) or not isinstance(row[1], int):
        return 0
    return (row[1] >> EPOCH_BITS) - (row[0] >> EPOCH_BITS) + 1


def integrity_problems(conn: ReadConnection) -> list[str]:
    """SQLite checks every b-tree and index against its table; PostgreSQL's equivalent (amcheck) is an
    extension the bot's role may not have: its indexes are in the schema check, the rows in verify. Both:
    no dedup tag may be held by two records (the same event stored twice, in any two epochs)."""
    problems = [] if isinstance(conn, PgReader) else [
        str(r[0]) for r in conn.execute("PRAGMA integrity_check(5)") if str(r[0]) != "ok"]  # fmt: skip
    if not problems and claimed_version(conn) != 2 and _epochs(conn) > 1:
        # (schema 2's UNIQUE index, and within one epoch schema 3's, checked above, rule a duplicate out)
        row = conn.execute(_DUPLICATE_TAGS_SQL).fetchone()
        if row is not None and int(row[0]):
            problems.append(f"{int(row[0])} dedup tag(s) held by more than one record (a record stored twice)")
    return problems


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


__all__ = [
    "MARKER_NAME",
    "PG_SCHEMA",
    "PgDedup",
    "PgReader",
    "PgTarget",
    "PgWriter",
    "ReadConnection",
    "SqliteWriter",
    "Writer",
    "locate",
    "pg_sql",
]
