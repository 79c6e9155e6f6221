"""Numbered store migrations: bring a log's layout up to `schema.SCHEMA_VERSION` (issue 16, item 5).

Contract: `migrate(conn)` runs on the writer's connection right after the writer
lock is taken (`LogStore.open`: the data dir's lock for SQLite, the advisory
lock for PostgreSQL), before anything is read or appended. Each step `N -> N+1`
is one function per backend, and every step of one open runs in one
transaction together with the `schema_version` update in `meta`: a crash
leaves the log at its old version, never half-migrated. A version this code
does not migrate from (schema 1, or a number it does not know) is left alone
for `LogStore._load` to refuse as before.

Migrations change the layout only, never a record: the rows (and so the tree,
every proof and every signed checkpoint) are the same before and after, so a
migrated log verifies against checkpoints signed before the migration.
Readers (`verify`, the reader, the view) do not migrate: they accept the
layout of every version in `schema.READABLE_VERSIONS`, checking it against the
one the meta table claims.

- 2 -> 3: the dedup index becomes unique per epoch of seq (`schema.EPOCH_BITS`),
  plus a partial index for the rotation records. SQLite cannot drop a UNIQUE
  column constraint, so the `records` table is rebuilt (one copy of the rows in
  seq order; the file needs free space about the size of the log while the
  transaction runs, and keeps the freed pages afterwards); PostgreSQL drops
  the constraint and builds the two indexes.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from bridge.log import db
from bridge.log.schema import RECORDS_INDEXES_V3, RECORDS_TRIGGERS, RECORDS_V3, SCHEMA_VERSION

Step = Callable[[db.Writer], Awaitable[None]]


async def _sqlite_2_to_3(conn: db.Writer) -> None:
    await conn.execute("ALTER TABLE records RENAME TO records_v2")
    await conn.execute(RECORDS_V3.rstrip(";"))
    await conn.execute(
        "INSERT INTO records (seq, dedup, header, commitment, body, leaf)"
        " SELECT seq, dedup, header, commitment, body, leaf FROM records_v2 ORDER BY seq"
    )
    await conn.execute("DROP TABLE records_v2")  # its triggers go with it (DROP fires no DELETE trigger)
    for statement in _statements(RECORDS_INDEXES_V3 + RECORDS_TRIGGERS):
        await conn.execute(statement)


async def _pg_2_to_3(conn: db.Writer) -> None:
    await conn.execute("ALTER TABLE records DROP CONSTRAINT records_dedup_key")
    for statement in _statements(db.PG_INDEXES_V3):
        await conn.execute(statement)


#: {from version: {backend: step}}: step N brings a log of schema N to N + 1.
STEPS: dict[int, dict[str, Step]] = {
    2: {db.SQLITE: _sqlite_2_to_3, db.POSTGRESQL: _pg_2_to_3},
}


def _statements(script: str) -> list[str]:
    """The statements of one of our DDL scripts: each ends with `;` at the end of a line (a trigger's body
    holds `; ` inside a line, so it stays whole)."""
    return [text.strip() for text in re.split(r";[ \t]*(?:\n|$)", script) if text.strip()]


async def stored_version(conn: db.Writer) -> bytes | None:
    async with conn.execute("SELECT v FROM meta WHERE k = 'schema_version'") as cur:
        row = await cur.fetchone()
    return None if row is None else bytes(row[0])


async def migrate(conn: db.Writer) -> list[int]:
    """Apply every step from the log's version up to `SCHEMA_VERSION`, in one transaction; the versions
    migrated from (empty when there was nothing to do, or nothing this code migrates from)."""
    raw = await stored_version(conn)
    try:
        version = int(raw.decode("ascii")) if raw is not None else 0
    except (UnicodeDecodeError, ValueError):
        return []
    steps = []
    while version in STEPS and version < SCHEMA_VERSION:
        steps.append(version)
        version += 1
    if not steps:
        return []
    await conn.execute("BEGIN IMMEDIATE")
    try:
        for start in steps:
            await STEPS[start][conn.backend](conn)
        await conn.execute("UPDATE meta SET v = ? WHERE k = 'schema_version'", (str(version).encode(),))
        await conn.execute("COMMIT")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise
    return steps
