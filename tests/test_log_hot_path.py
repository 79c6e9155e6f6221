"""The writer's fast paths give exactly the bytes of the slow, documented composition (issue 15)."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bridge.errors import Check, LogIntegrityError, StorageError
from bridge.events import canonical_bytes
from bridge.log import compression, crypto, db, format
from bridge.log import store as store_module
from bridge.log.dedup import DedupReader
from bridge.log.schema import PAGE_SIZE, db_path, dedup_tag
from bridge.log.store import LogStore
from bridge.log.verify import verify_log
from tests.conftest import LogDir, make_event

_bytes = st.binary


@given(
    rtype=st.sampled_from([format.RecordType.EVENT, format.RecordType.DECISION]),
    seq=st.integers(0, 2**64 - 1),
    appended_ms=st.integers(0, 2**64 - 1),
    key_id=st.integers(0, 2**32 - 1),
    tag=_bytes(min_size=16, max_size=16),
    nonce=_bytes(min_size=12, max_size=12),
    prev=_bytes(min_size=32, max_size=32),
    salt=_bytes(min_size=16, max_size=16),
    payload=_bytes(max_size=2048),
    log_id=_bytes(min_size=16, max_size=16),
    key=_bytes(min_size=32, max_size=32),
    compress=st.booleans(),
)
def test_seal_record_is_the_documented_composition(
    rtype: format.RecordType,
    seq: int,
    appended_ms: int,
    key_id: int,
    tag: bytes,
    nonce: bytes,
    prev: bytes,
    salt: bytes,
    payload: bytes,
    log_id: bytes,
    key: bytes,
    compress: bool,
) -> None:
    """`seal_record` (the hot path) = RecordHeader.pack, commitment, associated_data, compression.compress
    (version 2), AES-GCM and leaf_of, byte for byte, and `open_record` gives the payload back (both versions)."""
    sealer = crypto.Sealer(key)
    header, commit, body, leaf = format.seal_record(
        sealer, format.ad_prefix(log_id), rtype, seq, appended_ms, key_id, tag, nonce, prev, salt, payload,
        compress=compress,
    )  # fmt: skip
    version = format.VERSION_COMPRESSED if compress else format.VERSION_PLAIN
    slow_header = format.RecordHeader(version, rtype, seq, appended_ms, key_id, tag, nonce, prev)
    assert header == slow_header.pack()
    assert commit == format.commitment(salt + payload)  # of the payload itself, compressed or not
    stored = compression.compress(payload) if compress else payload
    assert body == crypto.seal(key, nonce, salt + stored, format.associated_data(log_id, header, commit))
    assert leaf == format.leaf_of(header, commit, body)
    assert (
        format.open_record(log_id, crypto.sealers({key_id: key}), format.unpack_header(header), header, commit, body)
        == payload
    )


_PREPARED = st.tuples(
    _bytes(min_size=16, max_size=16),  # conversation tag
    _bytes(min_size=12, max_size=12),  # nonce
    _bytes(min_size=16, max_size=16),  # salt
    _bytes(max_size=600),  # payload
    st.booleans(),  # compress
)


@given(
    seq=st.integers(0, 2**63),
    appended_ms=st.integers(0, 2**64 - 1),
    key_id=st.integers(0, 2**32 - 1),
    prev=_bytes(min_size=32, max_size=32),
    items=st.lists(_PREPARED, max_size=8),
    log_id=_bytes(min_size=16, max_size=16),
    key=_bytes(min_size=32, max_size=32),
)
def test_seal_prepared_rows_is_seal_prepared_in_turn(
    seq: int,
    appended_ms: int,
    key_id: int,
    prev: bytes,
    items: list[tuple[bytes, bytes, bytes, bytes, bool]],
    log_id: bytes,
    key: bytes,
) -> None:
    """`seal_prepared_rows` (the import's sealing loop, on a batch's columns) gives byte for byte what
    `seal_prepared` gives for each record in turn, seq counting up and each record chained to the leaf
    before, with each record's key passed through into its row."""
    sealer, prefix, event = crypto.Sealer(key), format.ad_prefix(log_id), format.RecordType.EVENT
    prepared = [
        (tag, nonce, *format.prepare_plaintext(salt, payload, compress=compress))
        for tag, nonce, salt, payload, compress in items
    ]
    keys = [hashlib.sha256(b"%d" % n).digest()[:16] for n in range(len(prepared))]
    expected, chain = [], prev
    for n, (tag, nonce, version, commit, plaintext) in enumerate(prepared):
        header, commitment, body, leaf = format.seal_prepared(
            sealer, prefix, event, seq + n, appended_ms, key_id, tag, nonce, chain, version, commit, plaintext
        )
        expected.append((seq + n, keys[n], header, commitment, body, leaf))
        chain = leaf
    rows = format.seal_prepared_rows(
        sealer, prefix, event, seq, appended_ms, key_id, prev, keys, [p[0] for p in prepared],
        b"".join(p[1] for p in prepared), bytes(p[2] for p in prepared), [p[3] for p in prepared],
        [p[4] for p in prepared],
    )  # fmt: skip
    assert rows == expected
    if prepared:  # columns of unequal length are refused, not sealed short
        with pytest.raises(ValueError):
            format.seal_prepared_rows(
                sealer, prefix, event, seq, appended_ms, key_id, prev, keys, [p[0] for p in prepared],
                b"".join(p[1] for p in prepared) + bytes(12), bytes(p[2] for p in prepared),
                [p[3] for p in prepared], [p[4] for p in prepared],
            )  # fmt: skip
        with pytest.raises(ValueError):
            format.seal_prepared_rows(
                sealer, prefix, event, seq, appended_ms, key_id, prev, keys, [p[0] for p in prepared][:-1],
                b"".join(p[1] for p in prepared), bytes(p[2] for p in prepared), [p[3] for p in prepared],
                [p[4] for p in prepared],
            )  # fmt: skip


@given(parts=st.lists(st.text(), min_size=1, max_size=5), key=_bytes(min_size=32, max_size=32))
def test_keyed_tag_is_blake2b_over_the_nul_joined_encoded_parts(parts: list[str], key: bytes) -> None:
    """The tag is keyed BLAKE2b over the parts encoded one by one and NUL-joined (lone surrogates included),
    so logs written before the faster join keep finding their duplicates."""
    msg = b"\x00".join(p.encode("utf-8", "surrogatepass") for p in parts)
    assert crypto.keyed_tag(key, *parts) == hashlib.blake2b(msg, key=key, digest_size=16).digest()


@given(
    head=st.lists(st.text(), min_size=1, max_size=3),
    rest=st.lists(st.text(), min_size=1, max_size=3),
    key=_bytes(min_size=32, max_size=32),
    length=st.integers(1, 64),
)
def test_a_keyed_tag_prefix_continued_gives_the_keyed_tag(
    head: list[str], rest: list[str], key: bytes, length: int
) -> None:
    """`keyed_tag_prefix(key, *head)` copied and updated with the rest NUL-joined is `keyed_tag(key, *head,
    *rest)` (the import's workers tag each line so), and one prefix serves many tags."""
    prefix = crypto.keyed_tag_prefix(key, *head, length=length)
    for _ in range(2):
        tag = prefix.copy()
        tag.update("\x00".join(rest).encode("utf-8", "surrogatepass"))
        assert tag.digest() == crypto.keyed_tag(key, *head, *rest, length=length)


async def test_new_logs_use_large_pages(empty_log: LogDir) -> None:
    """A new log is created with 16 KiB pages (fewer pages written per commit) and still in WAL mode."""
    conn = sqlite3.connect(db_path(empty_log.data_dir))
    try:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 16384
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_dedup_reader_sees_committed_tags_and_cannot_write(empty_log: LogDir) -> None:
    """The dedup reader finds exactly the committed tags asked for, and its connection refuses writes."""
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        await store.append_events([make_event(i) for i in range(5)])
        index_key = store.media_keys().index_key
        tags = [dedup_tag(index_key, "matrix", make_event(i).conversation, make_event(i).event_id) for i in range(8)]
        reader = await DedupReader.open(db_path(empty_log.data_dir))
        try:
            assert await reader.existing(tags, last_epoch=0) == set(tags[:5])
            assert await reader.existing([], last_epoch=0) == set()
            conn = reader._conn
            try:
                conn.execute("DELETE FROM counters")
                raise AssertionError("the dedup reader wrote")
            except sqlite3.OperationalError as exc:
                assert "readonly" in str(exc) or "query_only" in str(exc) or "read-only" in str(exc)
        finally:
            await reader.close()


async def test_redelivery_while_the_first_delivery_commits_is_a_duplicate(empty_log: LogDir) -> None:
    """An event re-delivered while its first batch is still committing (the lookup's read predates that
    commit) is counted as a duplicate, never stored twice; and a third batch sealed during both commits too."""
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        events = [make_event(i) for i in range(300)]
        first = asyncio.create_task(store.append_events(events))
        await asyncio.sleep(0)
        second = asyncio.create_task(store.append_events(events[::-1]))
        third = asyncio.create_task(store.append_events([*events[100:200], make_event(300)]))
        a, b, c = await asyncio.gather(first, second, third)
        assert (a.appended, b.appended, c.appended) == (300, 0, 1)
        assert (b.duplicates, c.duplicates) == (300, 100)
        assert await store.counter("duplicates") == 400
        await store.checkpoint()
    report = verify_log(empty_log.data_dir, empty_log.keys)
    assert report.records == store.size


def _stored_from(log: LogDir, first: int, order: str) -> list[Any]:
    """(seq, header, commitment, body) of the stored records from seq `first`, by `order` (seq or rowid)."""
    conn = sqlite3.connect(db_path(log.data_dir))
    try:
        return conn.execute(
            f"SELECT seq, header, commitment, body FROM records WHERE seq >= ? ORDER BY {order}",
            (first,),
        ).fetchall()
    finally:
        conn.close()


def _assert_they_open_to(log: LogDir, data_keys: dict[int, bytes], rows: list[Any], events: list[Any]) -> None:
    """Each row's header names its seq and the record opens (AEAD + commitment) to its event's canonical bytes."""
    for (seq, header_b, commit, body), event in zip(rows, events, strict=True):
        header = format.unpack_header(header_b)
        assert header.seq == seq
        payload = format.open_record(log.keys.log_id, crypto.sealers(data_keys), header, header_b, commit, body)
        assert payload == canonical_bytes(event)


async def test_records_sealed_by_the_fast_path_open_to_their_events(empty_log: LogDir) -> None:
    """Every record the writer sealed decrypts (AEAD + commitment) to the canonical bytes of its event."""
    events = [make_event(i) for i in range(20)]
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        result = await store.append_events(events)
        data_keys = dict(store.media_keys().data_keys)
    rows = _stored_from(empty_log, result.seqs[0], "seq")
    _assert_they_open_to(empty_log, data_keys, rows, events)


async def test_a_key_row_of_the_wrong_types_is_tampering_not_a_crash(empty_log: LogDir) -> None:
    """A key table row whose values have other types (a flipped serial-type byte, or an insider's UPDATE to text)
    makes `verify` and the writer's open report the key table (exit 1), never a TypeError (issue 15: 16 KiB pages
    moved such bytes where the random-corruption test hits them)."""
    conn = sqlite3.connect(db_path(empty_log.data_dir))
    try:
        conn.execute("UPDATE keys SET wrapped = 'not a blob' WHERE key_id = 1")
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(LogIntegrityError) as verified:
        verify_log(empty_log.data_dir, empty_log.keys)
    assert verified.value.check is Check.KEY_TABLE
    with pytest.raises(LogIntegrityError) as opened:
        await LogStore.open(empty_log.data_dir, empty_log.keys)
    assert opened.value.check is Check.KEY_TABLE


async def test_a_batch_longer_than_one_insert_statement_is_stored_whole_and_in_order(empty_log: LogDir) -> None:
    """A batch of several multi-row INSERT statements (4096 + 512 + 16 rows where SQLite allows 4096 a
    statement) and a tail of 3 stored one by one (`store._insert_records`): every record stored once, at its
    seq, opening to its event, and the log verifies."""
    sizes = store_module.STATEMENT_ROWS
    assert len(sizes) >= 4
    n = sizes[0] + sizes[3] + sizes[-1] * 2 + 3
    events = [make_event(i) for i in range(n)]
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        result = await store.append_events(events)
        data_keys = dict(store.media_keys().data_keys)
        await store.checkpoint()
    assert result.appended == n and list(result.seqs) == list(range(result.seqs[0], result.seqs[0] + n))
    rows = _stored_from(empty_log, result.seqs[0], "rowid")
    assert [row[0] for row in rows] == list(result.seqs)
    _assert_they_open_to(empty_log, data_keys, rows, events)
    verify_log(empty_log.data_dir, empty_log.keys)


@given(
    items=st.lists(st.tuples(_bytes(min_size=16, max_size=16), _bytes(max_size=700)), max_size=8),
    limit=st.sampled_from([compression.MAX_PAYLOAD, 300]),
)
@example(items=[(bytes(16), b"a" * 500), (bytes(range(16)), b"b" * 200)], limit=300)
def test_prepare_plaintexts_is_prepare_plaintext_in_turn(items: list[tuple[bytes, bytes]], limit: int) -> None:
    """`prepare_plaintexts` (the import's presealing loop) gives, per payload, `prepare_plaintext`'s version,
    commitment and plaintext byte for byte, payloads over `MAX_PAYLOAD` kept uncompressed by both (a lower
    limit stands in for 64 MiB); salts of the wrong length are refused."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compression, "MAX_PAYLOAD", limit)
        expected = [format.prepare_plaintext(salt, payload) for salt, payload in items]
        versions, commits, plaintexts = format.prepare_plaintexts(
            b"".join(salt for salt, _ in items), [payload for _, payload in items]
        )
    assert list(zip(versions, commits, plaintexts, strict=True)) == expected
    with pytest.raises(ValueError):
        format.prepare_plaintexts(b"".join(salt for salt, _ in items) + b"x", [payload for _, payload in items])


def _rows_colliding_inside_the_big_statement(size: int, stored: tuple[object, ...]) -> list[Any]:
    """4096 + 7 rows from seq `size`, row 4000 (inside the 4096-row statement) a copy of a stored record."""
    rows: list[Any] = [(size + n, n.to_bytes(16, "big"), b"h", b"c", b"b", b"l") for n in range(4096 + 7)]
    rows[4000] = stored
    return rows


async def test_a_conflict_in_a_multi_row_insert_leaves_nothing_of_the_batch(empty_log: LogDir) -> None:
    """A batch whose row 4000 (inside its 4096-row statement) collides with a stored record (its seq) fails
    as a whole: StorageError, none of its rows stored (the multi-row statements are `INSERT OR FAIL`: the
    transaction's rollback undoes the rows before the conflict), and the writer goes on writing."""
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        await store.append_events([make_event(i) for i in range(3)])
        size = store.size
        conn = sqlite3.connect(db_path(empty_log.data_dir))
        try:
            stored = conn.execute("SELECT seq, dedup, header, commitment, body, leaf FROM records").fetchall()
        finally:
            conn.close()
        rows = _rows_colliding_inside_the_big_statement(size, tuple(stored[-1]))
        with pytest.raises(StorageError):
            await store._transaction(lambda: store_module._insert_records(store._conn, rows))
        result = await store.append_events([make_event(3)])
        assert result.appended == 1 and store.size == size + 1
        await store.checkpoint()
    conn = sqlite3.connect(db_path(empty_log.data_dir))
    try:
        assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == size + 1
    finally:
        conn.close()
    verify_log(empty_log.data_dir, empty_log.keys)


@pytest.mark.parametrize("at_once", [True, False], ids=["one-call", "aiosqlite-without-_execute"])
async def test_a_batch_committed_at_once_that_fails_leaves_nothing_of_it(
    empty_log: LogDir, monkeypatch: pytest.MonkeyPatch, at_once: bool
) -> None:
    """On SQLite a batch's transaction runs in one call on the connection's thread (`_commit_at_once`): a
    batch whose row inside its 4096-row statement collides with a stored record fails as a whole
    (StorageError; none of its rows and no duplicate counter stored: ROLLBACK on that thread), and the
    writer goes on writing. The same with an aiosqlite lacking the private call (`runs_calls` False): the
    writer takes the statement-by-statement path and never calls `run`."""
    calls: list[object] = []
    real_run = db.SqliteWriter.run

    async def spy(self: db.SqliteWriter, call: Any) -> Any:
        calls.append(call)
        return await real_run(self, call)

    monkeypatch.setattr(db.SqliteWriter, "run", spy)
    if not at_once:
        monkeypatch.setattr(db.SqliteWriter, "runs_calls", property(lambda self: False))
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        await store.append_events([make_event(i) for i in range(3)])
        await store.checkpoint()
        size, frontier = store.size, store._frontier.copy()
        conn = sqlite3.connect(db_path(empty_log.data_dir))
        try:
            stored = conn.execute("SELECT seq, dedup, header, commitment, body, leaf FROM records").fetchall()
            checkpoints = conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
        finally:
            conn.close()
        rows = _rows_colliding_inside_the_big_statement(size, tuple(stored[-1]))
        grown = frontier.copy()
        grown.append_many([bytes(32)] * len(rows))
        batch = store_module._Batch(rows, 5, None, grown, bytes(32), set())
        with pytest.raises(StorageError):
            await store._commit(batch)
        result = await store.append_events([make_event(3)])
        assert result.appended == 1 and store.size == size + 1
        await store.checkpoint()
    conn = sqlite3.connect(db_path(empty_log.data_dir))
    try:
        assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == size + 1
        assert conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == checkpoints + 1
        assert conn.execute("SELECT COUNT(*) FROM counters WHERE name = 'duplicates'").fetchone()[0] == 0
    finally:
        conn.close()
    verify_log(empty_log.data_dir, empty_log.keys)
    assert bool(calls) is at_once
