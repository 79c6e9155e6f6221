"""Store migrations (issue 16, item 5) and schema 3's dedup index (issue 15, item 3).

A schema-2 log (built here through schema 2's own DDL, on both backends) verifies
as it is, is migrated by the writer at open in one transaction, and then
verifies, takes more events, finds the old ones as duplicates and packages a
month. Schema 3 keeps a tag unique per epoch only: the writer's tag filter and
every-epoch probe keep duplicates out across epochs and restarts, and verify
names a tag held twice.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.archive.package import snapshot
from bridge.archive.range import Month
from bridge.errors import Check, LogIntegrityError
from bridge.events import Event
from bridge.log import db, migrations, schema
from bridge.log.dedup import DedupReader, TagFilter
from bridge.log.schema import dedup_tag
from bridge.log.store import LogStore
from bridge.log.verify import verify_log
from tests.conftest import LogDir, create_log
from tests.support.archive_log import OPTIONS, event, ms, seal_for
from tests.support.pg import attacker

BACKENDS = ("sqlite", "postgresql")


def _log(request: pytest.FixtureRequest, tmp_path: Path) -> LogDir:
    """A log created on 1 January 2024 (as the archive tests' logs), SQLite or PostgreSQL."""
    pg = request.getfixturevalue("pg_server").new_log_target() if request.param == "postgresql" else None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(schema, "now_ms", lambda: ms(2024, 1, 1, 1))
        return create_log(tmp_path, pg)


@pytest.fixture(params=BACKENDS)
def jan_log(request: pytest.FixtureRequest, tmp_path: Path) -> LogDir:
    return _log(request, tmp_path)


def _append(log: LogDir, monkeypatch: pytest.MonkeyPatch, at: int, events: list[Event]) -> tuple[int, int]:
    """Append with the writer's clock at `at`, sealed at the end: (appended, duplicates)."""
    from bridge.log import store as store_module

    async def go() -> tuple[int, int]:
        monkeypatch.setattr(store_module, "now_ms", lambda: at)
        async with await LogStore.open(log.data_dir, log.keys) as store:
            result = await store.append_events(events)
            await store.checkpoint()
        monkeypatch.undo()
        return result.appended, result.duplicates

    return asyncio.run(go())


def to_schema_2(log: LogDir) -> None:
    """Give the log schema 2's layout (its DDL: one UNIQUE dedup index over the whole log), rows unchanged."""
    where = db.locate(log.data_dir)
    if isinstance(where, db.PgTarget):
        conn = psycopg.connect(where.dsn, **where.connect_args(), autocommit=True)
        with conn.transaction():
            conn.execute("DROP INDEX records_dedup")
            conn.execute("DROP INDEX records_rotation")
            conn.execute("ALTER TABLE records ADD CONSTRAINT records_dedup_key UNIQUE (dedup)")
            conn.execute("UPDATE meta SET v = %s WHERE k = 'schema_version'", (b"2",))
        conn.close()
        return
    lite = sqlite3.connect(where, isolation_level=None)
    lite.execute("BEGIN")
    lite.execute("ALTER TABLE records RENAME TO r3")
    lite.execute(schema.RECORDS_V2.rstrip(";"))
    lite.execute("INSERT INTO records SELECT * FROM r3 ORDER BY seq")
    lite.execute("DROP TABLE r3")
    for statement in migrations._statements(schema.RECORDS_TRIGGERS):
        lite.execute(statement)
    lite.execute("UPDATE meta SET v = ? WHERE k = 'schema_version'", (b"2",))
    lite.execute("COMMIT")
    lite.close()


def claimed_version(log: LogDir) -> bytes:
    from tests.support.pg import rows

    return bytes(rows(log.data_dir, "SELECT v FROM meta WHERE k = 'schema_version'")[0][0])


def test_a_schema_2_log_verifies_then_is_migrated_at_open_and_keeps_working(
    jan_log: LogDir, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    old = [event(n) for n in range(12)]
    assert _append(jan_log, monkeypatch, ms(2024, 1, 3), old) == (12, 0)
    to_schema_2(jan_log)
    assert claimed_version(jan_log) == b"2"
    assert verify_log(jan_log.data_dir, jan_log.keys).records == 14  # schema 2's layout, as its meta claims
    # The writer migrates at open; the old events are duplicates of what the migrated log holds.
    assert _append(jan_log, monkeypatch, ms(2024, 1, 9), [*old[:5], *(event(n) for n in range(12, 20))]) == (8, 5)
    assert claimed_version(jan_log) == b"3"
    assert verify_log(jan_log.data_dir, jan_log.keys).records == 22
    assert verify_log(jan_log.data_dir).records == 22
    package = snapshot(
        jan_log.data_dir, jan_log.keys, Month(2024, 1), tmp_path / "jan", OPTIONS, seal=seal_for(jan_log)
    )
    assert (package.start, package.end) == (0, 22)  # the whole log: January, migration included


def test_a_schema_2_layout_claiming_3_and_a_3_layout_claiming_2_are_tampering(jan_log: LogDir) -> None:
    """verify accepts exactly the layout of the version the meta table claims."""
    to_schema_2(jan_log)
    conn = attacker(jan_log.data_dir)
    conn.execute("UPDATE meta SET v = ? WHERE k = 'schema_version'", (b"3",))
    conn.close()
    with pytest.raises(LogIntegrityError) as info:
        verify_log(jan_log.data_dir)
    assert info.value.check == Check.SCHEMA


def test_a_failed_migration_leaves_schema_2_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One transaction: a step that fails half way (after the table was rebuilt) leaves the log at schema 2,
    verifying; the next open migrates it."""
    log = create_log(tmp_path)
    asyncio.run(_fill(log, 9))
    to_schema_2(log)

    real = migrations.STEPS[2][db.SQLITE]

    async def broken(conn: db.Writer) -> None:
        await real(conn)
        raise RuntimeError("power cut")

    monkeypatch.setitem(migrations.STEPS[2], db.SQLITE, broken)
    with pytest.raises(RuntimeError, match="power cut"):
        asyncio.run(_fill(log, 3))
    assert claimed_version(log) == b"2"
    assert verify_log(log.data_dir, log.keys).records == 11
    monkeypatch.setitem(migrations.STEPS[2], db.SQLITE, real)
    asyncio.run(_fill(log, 3, start=100))
    assert claimed_version(log) == b"3"
    assert verify_log(log.data_dir, log.keys).records == 14


async def _fill(log: LogDir, n: int, start: int = 0) -> None:
    async with await LogStore.open(log.data_dir, log.keys) as store:
        await store.append_events([event(i) for i in range(start, start + n)])
        await store.checkpoint()


def test_a_schema_1_log_is_not_migrated(tmp_path: Path) -> None:
    from tests.test_schema_v1 import v1_log

    data, _ = v1_log(tmp_path)
    conn = sqlite3.connect(data / "log.sqlite3")
    before = conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()

    async def go() -> list[int]:
        writer = db.SqliteWriter(await __import__("aiosqlite").connect(data / "log.sqlite3", isolation_level=None))
        try:
            return await migrations.migrate(writer)
        finally:
            await writer.close()

    assert asyncio.run(go()) == []
    assert conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == before


def test_a_tag_held_twice_in_two_epochs_is_named_by_verify(any_filled_log: LogDir) -> None:
    """Schema 3's index is unique per epoch: a record stored again in a later epoch gets past it, not past
    verify (the same record bytes at seq 2^EPOCH_BITS + 5, under the tag of record 5; the gap before it is
    named too, but a writer's bug would have sealed the copy in its place)."""
    from bridge.log.verify import open_readonly

    conn = attacker(any_filled_log.data_dir)
    row = conn.execute("SELECT dedup, header, commitment, body, leaf FROM records WHERE seq = 5").fetchone()
    insert = "INSERT INTO records (seq, dedup, header, commitment, body, leaf) VALUES (?, ?, ?, ?, ?, ?)"
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.UniqueViolation)):  # the same epoch: refused
        conn.execute(insert, (60, *row))
    conn.execute(insert, ((1 << schema.EPOCH_BITS) + 5, *row))
    conn.close()
    reader = open_readonly(any_filled_log.data_dir)
    try:  # verify's database check (it runs before the records are read) names the tag held twice
        assert db.integrity_problems(reader) == ["1 dedup tag(s) held by more than one record (a record stored twice)"]
    finally:
        reader.close()
    with pytest.raises(LogIntegrityError):
        verify_log(any_filled_log.data_dir)


def test_the_probe_finds_a_tag_in_every_epoch(tmp_path: Path) -> None:
    """`DedupReader.existing` looks in epochs 0..last, each through the index."""
    path = tmp_path / "log.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(schema._SCHEMA)
    tags = {seq: os.urandom(32) for seq in (3, (1 << schema.EPOCH_BITS) + 3, 3 * (1 << schema.EPOCH_BITS) + 1)}
    for seq, tag in tags.items():
        conn.execute("INSERT INTO records VALUES (?, ?, x'', x'', x'', x'')", (seq, tag))
    conn.close()

    async def go() -> tuple[set[bytes], set[bytes], set[bytes]]:
        reader = await DedupReader.open(path)
        try:
            stranger = os.urandom(32)
            every = await reader.existing([*tags.values(), stranger], last_epoch=3)
            first = await reader.existing([*tags.values(), stranger], last_epoch=0)
            loaded = [tag for epoch in range(5) for tag in await reader.epoch_tags(epoch)]
            return every, first, set(loaded)
        finally:
            await reader.close()

    every, first, loaded = asyncio.run(go())
    assert every == set(tags.values()) == loaded
    assert first == {tags[3]}


async def test_duplicates_are_found_after_a_restart_through_the_filter(any_empty_log: LogDir) -> None:
    """The filter is rebuilt from the index after open: events appended before a restart are duplicates after."""
    log = any_empty_log
    async with await LogStore.open(log.data_dir, log.keys) as store:
        assert (await store.append_events([event(n) for n in range(30)])).appended == 30
    async with await LogStore.open(log.data_dir, log.keys) as store:
        assert store._filter_task is not None
        await store._filter_task
        assert store._filter_loaded and all(
            dedup_tag(store.media_keys().index_key, "matrix", e.conversation, e.event_id) in store._filter
            for e in (event(n) for n in range(30))
        )
        result = await store.append_events([event(n) for n in range(25, 40)])
        assert (result.appended, result.duplicates) == (10, 5)
        assert await store.contains("matrix", event(3).conversation, event(3).event_id)
    assert verify_log(log.data_dir, log.keys).records == 42


async def test_no_duplicate_is_appended_while_the_filter_loads(
    any_empty_log: LogDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until the filter is loaded every tag is probed in every epoch: a writer whose filter never finishes
    loading still finds every duplicate (the filter is a shortcut, never the only check)."""
    log = any_empty_log
    async with await LogStore.open(log.data_dir, log.keys) as store:
        await store.append_events([event(n) for n in range(20)])

    async def never(self: LogStore, last_epoch: int) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(LogStore, "_fill_filter", never)
    async with await LogStore.open(log.data_dir, log.keys) as store:
        assert not store._filter_loaded
        result = await store.append_events([event(n) for n in range(15, 25)])
        assert (result.appended, result.duplicates) == (5, 5)
    assert verify_log(log.data_dir, log.keys).records == 27


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=40), max_size=300),
    st.integers(min_value=1, max_value=64),
)
def test_the_tag_filter_never_forgets_a_tag(tags: list[bytes], capacity: int) -> None:
    """No false negatives, whatever the tags (32-byte keyed tags or other lengths), across the filter's growth
    (a tiny first part forces several)."""
    f = TagFilter(capacity)
    f.update(tags)
    assert all(t in f for t in tags)


def test_the_tag_filter_rarely_hits_a_stranger() -> None:
    f = TagFilter(capacity=20_000)
    f.update(os.urandom(32) for _ in range(20_000))
    hits = sum(os.urandom(32) in f for _ in range(20_000))
    assert hits < 40  # 32 bits and 3 probes per tag, one part: about 1 in 1,400 (14 expected)


def test_migrate_store_copies_a_schema_2_log_which_the_postgresql_writer_then_migrates(
    tmp_path: Path, pg_server: object
) -> None:
    """`migrate-store` from a SQLite log not yet migrated: the copy keeps schema 2's layout (its meta row is
    copied as it is), verifies to the same root, and the PostgreSQL writer migrates it at its first open."""
    from bridge.log.migrate import migrate_to_postgresql

    log = create_log(tmp_path)
    asyncio.run(_fill(log, 10))
    to_schema_2(log)
    target = pg_server.new_log_target()  # type: ignore[attr-defined]
    new_dir = tmp_path / "on-pg"
    moved = migrate_to_postgresql(log.data_dir, target, new_dir, log.keys)
    assert moved.target.records == moved.source.records == 12
    on_pg = LogDir(new_dir, log.key_file, log.keys, target)
    assert claimed_version(on_pg) == b"2"
    asyncio.run(_fill(on_pg, 6, start=7))  # events 7..9 are in the log already, 10..12 are new
    assert claimed_version(on_pg) == b"3"
    assert verify_log(new_dir, log.keys).records == 12 + 3
