"""A real PostgreSQL server for tests, from Debian's binaries, on 127.0.0.1 only (fsync on, password auth).

`PgServer(root).start()` runs `initdb` and `pg_ctl start` on a free port; `new_log_target()` makes a fresh
schema and returns the `PgTarget` (DSN without the password + password file) a test log lives in, so every
test has its own log and the server is started once per session. initdb refuses to run as root: as root
(CI, these machines) the server runs as the unprivileged `nobody` through `runuser`, in a directory it owns.

`attacker(log)` is someone with the database owner's rights: for PostgreSQL they disable the append-only
triggers (ALTER TABLE ... DISABLE TRIGGER USER), for SQLite they drop them; its `execute` takes the log's
`?`-style SQL on both.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psycopg

from bridge.dev.synapse import free_port
from bridge.log import db

USER = "chatarchief"
DATABASE = "chatarchief"


def pg_bin(name: str) -> str:
    """A server binary: on PATH, else in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"{name} not found: apt-get install postgresql (see .ci/run)")
    return candidates[-1]


class PgServer:
    def __init__(self, client_dir: Path) -> None:
        self.client_dir = client_dir
        self.port = free_port()
        # The server's own directory: outside pytest's 0700 tmp tree, owned by the server's user.
        self.root = Path(tempfile.mkdtemp(prefix="chatarchief-pg-"))
        self.password = uuid.uuid4().hex
        self.password_file = client_dir / "pg-password"
        self._as: list[str] = []

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self.client_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.password + "\n")
        server_pw = self.root / "pw"
        server_pw.write_text(self.password + "\n")
        if os.geteuid() == 0:
            os.chmod(self.root, 0o700)
            shutil.chown(self.root, "nobody", "nogroup")
            shutil.chown(server_pw, "nobody", "nogroup")
            self._as = ["runuser", "-u", "nobody", "--"]
        data = self.root / "data"
        self._run(
            pg_bin("initdb"), "-D", str(data), "-U", USER, "--auth=scram-sha-256", f"--pwfile={server_pw}",
            "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions",
        )  # fmt: skip
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' -c fsync=on"
        self._run(
            pg_bin("pg_ctl"), "start", "-w", "-t", "60", "-D", str(data), "-l", str(self.root / "log"), "-o", options
        )
        with psycopg.connect(self.dsn("postgres"), password=self.password, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run(pg_bin("pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(self.root / "data"))
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = DATABASE, schema: str | None = None) -> str:
        base = f"host=127.0.0.1 port={self.port} dbname={dbname} user={USER}"
        return base + (f" options='-csearch_path={schema}'" if schema else "")

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(), password=self.password, autocommit=True)

    def new_log_target(self) -> db.PgTarget:
        """A fresh, empty schema for one log."""
        schema = f"log_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return db.PgTarget(self.dsn(schema=schema), self.password_file)


class Attacker:
    """A connection with the owner's rights and the append-only triggers out of the way."""

    def __init__(self, data_dir: Path) -> None:
        where = db.locate(data_dir)
        self._pg: psycopg.Connection[Any] | None = None
        self._lite: sqlite3.Connection | None = None
        if isinstance(where, db.PgTarget):
            self._pg = psycopg.connect(where.dsn, **where.connect_args(), autocommit=True)
            for table in ("records", "checkpoints"):
                self._pg.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        else:
            self._lite = sqlite3.connect(where, isolation_level=None)
            for name in ("records_no_update", "records_no_delete", "checkpoints_no_update", "checkpoints_no_delete"):
                self._lite.execute(f"DROP TRIGGER IF EXISTS {name}")

    @property
    def postgresql(self) -> bool:
        return self._pg is not None

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        if self._pg is not None:
            return self._pg.execute(db.pg_sql(sql), params)
        assert self._lite is not None
        return self._lite.execute(sql, params)

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
        if self._lite is not None:
            self._lite.close()


def attacker(data_dir: Path) -> Attacker:
    return Attacker(data_dir)


def rows(data_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read rows from the log of `data_dir` on either backend (through the readers' own read-only connection)."""
    from bridge.log.verify import open_readonly

    conn = open_readonly(data_dir)
    try:
        return [tuple(r) for r in conn.execute(sql, params).fetchall()]
    finally:
        conn.close()
