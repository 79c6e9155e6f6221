"""The log store on both backends (SQLite, PostgreSQL): group commit, idempotency, cursors, failures, reopening."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import KeyFileError, StorageError, UsageError
from bridge.events import canonical_bytes
from bridge.log import format, merkle
from bridge.log.schema import INIT_RECORDS as B  # a new log holds its two key records
from bridge.log.store import CheckpointPolicy, LogStore
from bridge.log.verify import verify_log
from tests.conftest import BACKENDS, LogDir, create_log, make_event
from tests.support.pg import PgServer, rows


@pytest.fixture
def empty_log(any_empty_log: LogDir) -> LogDir:
    """The contract holds on every backend: each test here runs against SQLite and PostgreSQL."""
    return any_empty_log


async def test_duplicates_are_counted_not_stored(empty_log: LogDir) -> None:
    """The same (source, conversation, event_id) appended twice, across or within batches, is stored once."""
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        first = await store.append_events([make_event(1), make_event(2), make_event(1)])
        second = await store.append_events([make_event(2), make_event(3)])
        assert (first.appended, first.duplicates, first.seqs) == (2, 1, (B, B + 1))
        assert (second.appended, second.duplicates, second.seqs) == (1, 1, (B + 2,))
        assert store.size == B + 3
        assert await store.counter("duplicates") == 2
        # Same event id in another conversation is a different event.
        other = await store.append_events([make_event(1, conversation="!other:example.org")])
        assert other.appended == 1


async def test_cursor_is_stored_with_the_batch(empty_log: LogDir) -> None:
    """The source cursor is saved in the same transaction as the events it acknowledges."""
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        assert await store.get_cursor("matrix:@bot:x") is None
        await store.append_events([make_event(1)], cursor=("matrix:@bot:x", "s72594_4483_1934"))
        assert await store.get_cursor("matrix:@bot:x") == "s72594_4483_1934"
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        assert await store.get_cursor("matrix:@bot:x") == "s72594_4483_1934"


async def test_failed_commit_rolls_back_events_and_cursor(empty_log: LogDir) -> None:
    """A commit that fails (here: the database is locked by another session) stores nothing, advances nothing,
    and the next attempt reuses the same sequence numbers."""
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        await store.append_events([make_event(0)], cursor=("c", "t0"))
        if empty_log.pg is not None:
            blocker: Any = psycopg.connect(empty_log.pg.dsn, **empty_log.pg.connect_args(), autocommit=True)
            blocker.execute("BEGIN")
            blocker.execute("LOCK TABLE records IN EXCLUSIVE MODE")
            await store._conn.execute("SET lock_timeout = '200ms'")
        else:
            blocker = sqlite3.connect(empty_log.db, isolation_level=None, timeout=0)
            blocker.execute("BEGIN IMMEDIATE")
            await store._conn.execute("PRAGMA busy_timeout = 0")
        with pytest.raises(StorageError):
            await store.append_events([make_event(1), make_event(2)], cursor=("c", "t1"))
        blocker.execute("ROLLBACK")
        blocker.close()
        assert store.size == B + 1
        assert await store.get_cursor("c") == "t0"
        retry = await store.append_events([make_event(1), make_event(2)], cursor=("c", "t1"))
        assert retry.seqs == (B + 1, B + 2)
        await store.checkpoint()
    report = verify_log(empty_log.data_dir, empty_log.keys)
    assert report.records == B + 3 and report.unsealed == 0


async def test_pipelined_batches_keep_order_and_dedup(empty_log: LogDir) -> None:
    """Batches appended concurrently are committed in order, gapless, and dedup across in-flight batches."""
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        tasks = [
            asyncio.create_task(store.append_events([make_event(i) for i in range(b * 10, b * 10 + 15)]))
            for b in range(8)
        ]
        results = await asyncio.gather(*tasks)
        assert sum(r.appended for r in results) == 85
        assert sum(r.duplicates for r in results) == 8 * 15 - 85
        seqs = [s for r in results for s in r.seqs]
        assert seqs == list(range(B, B + 85))
        await store.checkpoint()
    assert verify_log(empty_log.data_dir, empty_log.keys).records == B + 85


async def test_reopen_continues_the_chain_and_tree(empty_log: LogDir) -> None:
    """Reopening restores the frontier and previous leaf, so appends after a restart verify."""
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        await store.append_events([make_event(i) for i in range(5)])
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        assert store.size == B + 5
        await store.append_events([make_event(i) for i in range(5, 9)])
        await store.checkpoint()
    report = verify_log(empty_log.data_dir, empty_log.keys)
    assert report.records == B + 9 and report.unsealed == 0


async def test_frontier_is_rebuilt_from_the_signed_edge_and_the_tail(empty_log: LogDir) -> None:
    """On open the head is the newest signed edge extended by the unsealed records, recomputed from their bytes."""
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        await store.append_events([make_event(i) for i in range(6)])
        await store.checkpoint()
        await store.append_events([make_event(i) for i in range(6, 9)])  # an unsealed tail
    leaves = [
        format.leaf_of(bytes(h), bytes(c), bytes(b))
        for h, c, b in rows(empty_log.data_dir, "SELECT header, commitment, body FROM records ORDER BY seq")
    ]
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        assert store.size == B + 9
        assert store._frontier.root() == merkle.root(leaves)


async def test_checkpoint_policy_by_count(empty_log: LogDir) -> None:
    """With every_records=4, checkpoints appear as soon as 4 new records are committed."""
    policy = CheckpointPolicy(every_records=4, every_seconds=3600)
    async with await LogStore.open(empty_log.data_dir, empty_log.keys, policy) as store:
        for i in range(10):
            await store.append_events([make_event(i)])
    sizes = [r[0] for r in rows(empty_log.data_dir, "SELECT size FROM checkpoints ORDER BY size")]
    assert sizes == [B, B + 4, B + 8]


async def test_checkpoint_policy_by_time(empty_log: LogDir) -> None:
    """With a tiny interval every commit that adds records signs a checkpoint."""
    policy = CheckpointPolicy(every_records=10_000, every_seconds=0.001)
    async with await LogStore.open(empty_log.data_dir, empty_log.keys, policy) as store:
        for i in range(3):
            await asyncio.sleep(0.005)
            await store.append_events([make_event(i)])
    sizes = [r[0] for r in rows(empty_log.data_dir, "SELECT size FROM checkpoints ORDER BY size")]
    assert sizes == [B, B + 1, B + 2, B + 3]


async def test_on_demand_checkpoint_of_a_new_log(empty_log: LogDir) -> None:
    """A new log is sealed over its key records; an on-demand checkpoint signs nothing new."""
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        first = await store.checkpoint()
        again = await store.checkpoint()
    assert first == again and f"\n{B}\n" in first


async def test_open_with_another_logs_key_is_refused(empty_log: LogDir, tmp_path: Path) -> None:
    """Opening the store with another log's keys is a KeyFileError, before anything is written."""
    other = create_log(tmp_path / "other")
    with pytest.raises(KeyFileError):
        await LogStore.open(empty_log.data_dir, other.keys)


async def test_open_without_a_log_is_a_usage_error(tmp_path: Path, empty_log: LogDir) -> None:
    """A data dir without a log points the operator at `init`."""
    with pytest.raises(UsageError, match="chatarchief init"):
        await LogStore.open(tmp_path / "nothing", empty_log.keys)


async def test_no_plaintext_in_database_file(empty_log: LogDir, request: pytest.FixtureRequest) -> None:
    """Message bodies, room ids, event ids and sender ids do not appear in the database files (PostgreSQL:
    none of the server's files, its WAL and data files after a CHECKPOINT, nor the data dir)."""
    marker = "GEHEIM-MARKER-7731"
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        await store.append_events(
            [make_event(i, conversation=f"!{marker}room:example.org", body=f"{marker} body {i}") for i in range(20)]
        )
        await store.checkpoint()
    paths = list(empty_log.data_dir.iterdir())
    if empty_log.pg is not None:
        server: PgServer = request.getfixturevalue("pg_server")
        with server.admin() as admin:
            admin.execute("CHECKPOINT")
        paths += [p for p in server.root.rglob("*") if p.is_file()]
        assert any("pg_wal" in p.parts for p in paths)  # the scan reaches the WAL the records went through
    for path in paths:
        data = path.read_bytes()
        for needle in (marker, "$event1", "@minister"):
            assert needle.encode() not in data, (path.name, needle)


async def test_records_decrypt_back_to_the_events(empty_log: LogDir) -> None:
    """The read-only reader returns exactly the events appended, in order, while the writer is open."""
    from bridge.log.reader import iter_events

    events = [make_event(i) for i in range(12)]
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        await store.append_events(events)
        back = list(iter_events(empty_log.data_dir, empty_log.keys))
    assert [e for _, e in back] == events
    assert [canonical_bytes(e) for _, e in back] == [canonical_bytes(e) for e in events]


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(st.integers(0, 40), max_size=12), min_size=1, max_size=8))
def test_any_append_sequence_verifies(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, backend: str, batches: list[list[int]]
) -> None:
    """Property: for any sequence of batches (with repeats), the log holds each event once, gapless, and verifies."""
    pg = request.getfixturevalue("pg_server").new_log_target() if backend == "postgresql" else None
    log = create_log(tmp_path_factory.mktemp("prop"), pg)

    async def go() -> int:
        policy = CheckpointPolicy(every_records=5, every_seconds=3600)
        async with await LogStore.open(log.data_dir, log.keys, policy) as store:
            for batch in batches:
                await store.append_events([make_event(i) for i in batch])
            await store.checkpoint()
            return store.size

    size = asyncio.run(go())
    assert size == B + len({i for b in batches for i in b})
    report = verify_log(log.data_dir, log.keys)
    assert report.records == size and report.unsealed == 0


def test_header_round_trip_and_unknown_versions() -> None:
    """Headers pack to 82 bytes and back; unknown versions and types are refused."""
    header = format.RecordHeader(1, format.RecordType.EVENT, 7, 123, 2, os.urandom(16), os.urandom(12), bytes(32))
    packed = header.pack()
    assert len(packed) == format.HEADER_BYTES == 82
    assert format.unpack_header(packed) == header
    assert packed[format.NONCE_OFFSET : format.NONCE_OFFSET + 12] == header.nonce
    assert format.unpack_header(b"\x02" + packed[1:]).version == format.VERSION_COMPRESSED
    with pytest.raises(format.FormatError):
        format.unpack_header(b"\x03" + packed[1:])
    with pytest.raises(format.FormatError, match="never compressed"):  # clear records are version 1 only
        format.unpack_header(b"\x02\x03" + packed[2:])
    with pytest.raises(format.FormatError):
        format.unpack_header(packed[:1] + b"\x09" + packed[2:])
    with pytest.raises(format.FormatError):
        format.unpack_header(packed[:-1])


async def test_other_content_under_a_known_id_is_kept_as_a_conflicting_version(empty_log: LogDir) -> None:
    """An id already in the log arriving with other content (a decrypted export imported over a live capture
    that could not decrypt) is stored as a version pointing at the original; the same content again, even
    with another arrival time, decryption evidence or raw transport field, is a duplicate; so is the version
    arriving a second time."""
    import dataclasses

    from bridge.events import Kind
    from bridge.log.reader import iter_events

    live = dataclasses.replace(make_event(1), kind=Kind.UNDECRYPTABLE, content={"algorithm": "m.megolm.v1.aes-sha2"})
    decrypted = dataclasses.replace(make_event(1), received_at=live.received_at + 5000)
    redelivered = dataclasses.replace(
        live, received_at=live.received_at + 9000, raw={**live.raw, "unsigned": {"age": 1234}}
    )
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        assert (await store.append_events([live])).appended == 1
        again = await store.append_events([redelivered])
        assert (again.appended, again.duplicates) == (0, 1)
        version = await store.append_events([decrypted])
        assert (version.appended, version.duplicates) == (1, 0)
        twice = await store.append_events([dataclasses.replace(decrypted, received_at=1)])
        assert (twice.appended, twice.duplicates) == (0, 1)
        await store.checkpoint()
    stored = [e for _, e in iter_events(empty_log.data_dir, empty_log.keys)]
    assert [e.kind for e in stored] == [Kind.UNDECRYPTABLE, Kind.MESSAGE]
    assert stored[1].event_id.startswith("$event1#version-") and stored[1].content["version_of"] == "$event1"
    assert stored[1].content["body"] == "message 1"
    verify_log(empty_log.data_dir, empty_log.keys)


async def test_a_copy_stripped_by_a_later_redaction_is_a_duplicate_not_a_version(empty_log: LogDir) -> None:
    """The log holds a message whole; the sync loop, behind the spool (or replaying after a crash), brings it
    again after a redaction stripped it: only the `redacted_before_capture` marker, or the original the server
    gave back (MSC2815) with the marker. Both are duplicates: nothing changed but a later redaction, which is
    its own record. Whatever else differs (sender, time, a recovered content that is not the stored one) is
    still a conflicting version, and so is the whole event arriving after a stripped copy (it tells more)."""
    import dataclasses

    from bridge.log.reader import iter_events

    whole = make_event(1)
    marker = {"redacted_before_capture": True, "redacted_by": "$redaction"}
    stripped = dataclasses.replace(whole, content=marker, relates_to=None, received_at=whole.received_at + 10)
    recovered = dataclasses.replace(whole, content={**whole.content, **marker, "recovered_via": "msc2815"})
    forged = dataclasses.replace(recovered, content={**recovered.content, "body": "iets anders"})
    other_sender = dataclasses.replace(stripped, sender="@ander:example.org")
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        assert (await store.append_events([whole])).appended == 1
        for copy in (stripped, recovered):
            result = await store.append_events([copy])
            assert (result.appended, result.duplicates) == (0, 1)
        for changed in (forged, other_sender):
            assert (await store.append_events([changed])).appended == 1
        later = dataclasses.replace(make_event(2), content=marker)
        assert (await store.append_events([later])).appended == 1
        assert (await store.append_events([make_event(2)])).appended == 1
        await store.checkpoint()
    stored = [e for _, e in iter_events(empty_log.data_dir, empty_log.keys)]
    versions = [e.content["version_of"] for e in stored if "#version-" in e.event_id]
    assert versions == [whole.event_id, whole.event_id, "$event2"]
    verify_log(empty_log.data_dir, empty_log.keys)
