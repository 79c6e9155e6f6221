"""Attacks by an insider who can write the data dir but holds no key (issue 9, holes 1, 3 and 5).

Each test does only what docs/log-format.md tells such an insider: it drops the
append-only triggers, writes rows of the documented shape, and then runs the
routine commands an operator would. On the log format before this change each
attack went through: the writer signed the forged tail, a chosen frontier got
signed, deleted media and a deleted or swapped key table passed keyless verify.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bridge.blobs import BlobStore
from bridge.cli import app
from bridge.errors import LogIntegrityError
from bridge.events import Attachment, Event, Kind
from bridge.log import format
from bridge.log.reader import iter_events
from bridge.log.schema import INIT_RECORDS as B
from bridge.log.store import LogStore
from bridge.log.verify import verify_log
from tests.conftest import LogDir, make_event

#: Every check here holds for the serial walk and for helper processes (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("verify_workers")

runner = CliRunner()


def attacker(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    for name in ("records_no_update", "records_no_delete", "checkpoints_no_update", "checkpoints_no_delete"):
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    return conn


def checkpoint_sizes(db: Path) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        return [int(r[0]) for r in conn.execute("SELECT size FROM checkpoints ORDER BY size")]
    finally:
        conn.close()


def forge_tail_record(db: Path) -> int:
    """Append a structurally valid record (right seq, chained to the last leaf, leaf recomputed) with garbage
    ciphertext, as the format documentation allows anyone to build: returns its seq."""
    conn = attacker(db)
    seq, header_b, commit, body = conn.execute(
        "SELECT seq, header, commitment, body FROM records ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    prev = format.leaf_of(bytes(header_b), bytes(commit), bytes(body))
    last = format.unpack_header(bytes(header_b))
    header = format.RecordHeader(
        format.FORMAT_VERSION, format.RecordType.EVENT, seq + 1, last.appended_ms + 1, 1,
        os.urandom(16), os.urandom(12), prev,
    ).pack()  # fmt: skip
    fake_commit, fake_body = os.urandom(32), os.urandom(200)
    leaf = format.leaf_of(header, fake_commit, fake_body)
    conn.execute(
        "INSERT INTO records (seq, dedup, header, commitment, body, leaf) VALUES (?, ?, ?, ?, ?, ?)",
        (seq + 1, os.urandom(16), header, fake_commit, fake_body, leaf),
    )
    conn.close()
    return int(seq) + 1


def cli(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout + result.stderr


@pytest.mark.parametrize("command", ["import", "withhold", "rotate-key"])
def test_forged_tail_record_is_never_signed(filled_log: LogDir, command: str, tmp_path: Path) -> None:
    """A forged record appended to the tail makes every writing command refuse (exit 1, naming the record)
    before it signs anything; keyless verify reports the tail as vouched for by nothing."""
    forged = forge_tail_record(filled_log.db)
    before = checkpoint_sizes(filled_log.db)
    base = ["--data-dir", filled_log.data_dir, "--key-file", filled_log.key_file]
    if command == "import":
        lines = tmp_path / "more.jsonl"
        lines.write_text('{"type":"m.room.message","room_id":"!r:x","event_id":"$new","content":{"body":"x"}}\n')
        code, output = cli("import", *base, lines)
    elif command == "withhold":
        code, output = cli("withhold", *base, "$event3", "--reason", "privé", "--by", "archivaris")
    else:
        code, output = cli("rotate-key", *base)
    assert code == 1, output
    assert f"record {forged}" in output
    assert checkpoint_sizes(filled_log.db) == before
    with pytest.raises(LogIntegrityError, match="vouched for by nothing"):
        verify_log(filled_log.data_dir)
    with pytest.raises(LogIntegrityError) as info:
        verify_log(filled_log.data_dir, filled_log.keys)
    assert info.value.seq == forged


async def test_forged_tail_is_refused_by_the_writer_itself(filled_log: LogDir) -> None:
    """`LogStore.open` (what `run` does at start-up) refuses a forged tail record: nothing can be signed."""
    forged = forge_tail_record(filled_log.db)
    with pytest.raises(LogIntegrityError) as info:
        await LogStore.open(filled_log.data_dir, filled_log.keys)
    assert info.value.seq == forged


async def test_saved_frontier_is_no_signing_oracle(filled_log: LogDir) -> None:
    """Chosen hashes of the right size written as the log's saved frontier (meta, as in earlier versions, or
    the newest checkpoint's stored edge) are never signed: the first is ignored, the second refused."""
    chosen = (B + 50).to_bytes(8, "big") + os.urandom(32) * (B + 50).bit_count()
    conn = attacker(filled_log.db)
    conn.execute("INSERT INTO meta (k, v) VALUES ('frontier', ?)", (chosen,))
    conn.close()
    async with await LogStore.open(filled_log.data_dir, filled_log.keys) as store:
        await store.append_events([make_event(900)])
        note = await store.checkpoint()
    with pytest.raises(LogIntegrityError, match="meta"):
        verify_log(filled_log.data_dir, filled_log.keys)
    conn = attacker(filled_log.db)
    conn.execute("DELETE FROM meta WHERE k = 'frontier'")
    conn.close()
    assert verify_log(filled_log.data_dir, filled_log.keys).sealed_size == B + 51  # the signed root is the true one
    assert f"\n{B + 51}\n" in note

    conn = attacker(filled_log.db)
    size = conn.execute("SELECT max(size) FROM checkpoints").fetchone()[0]
    chosen_edge = size.to_bytes(8, "big") + os.urandom(32) * size.bit_count()
    conn.execute("UPDATE checkpoints SET frontier = ? WHERE size = ?", (chosen_edge, size))
    conn.close()
    before = checkpoint_sizes(filled_log.db)
    with pytest.raises(LogIntegrityError, match="tree edge"):
        await LogStore.open(filled_log.data_dir, filled_log.keys)
    assert checkpoint_sizes(filled_log.db) == before


def test_deleted_key_table_fails_keyless_verify_and_the_key_file_recovers_every_key(filled_log: LogDir) -> None:
    """Deleting the key table is tampering keyless (exit 1); the key file plus the log's KEY records still
    recover every key, so every event reads back."""
    expected = [e for _, e in iter_events(filled_log.data_dir, filled_log.keys)]
    conn = attacker(filled_log.db)
    conn.execute("DELETE FROM keys")
    conn.close()
    code, output = cli("verify", "--data-dir", filled_log.data_dir)
    assert code == 1 and "key" in output
    assert [e for _, e in iter_events(filled_log.data_dir, filled_log.keys)] == expected


def test_swapped_key_table_fails_keyless_verify(filled_log: LogDir) -> None:
    """Swapping the wrapped keys of two rows (index and data key) is caught without any key."""
    conn = attacker(filled_log.db)
    rows = {int(k): bytes(w) for k, w in conn.execute("SELECT key_id, wrapped FROM keys")}
    conn.execute("UPDATE keys SET wrapped = ? WHERE key_id = 0", (rows[1],))
    conn.execute("UPDATE keys SET wrapped = ? WHERE key_id = 1", (rows[0],))
    conn.close()
    code, output = cli("verify", "--data-dir", filled_log.data_dir)
    assert code == 1 and "key table" in output


async def test_rotation_undo_and_bogus_current_key_are_tampering(filled_log: LogDir) -> None:
    """After a rotation, deleting the new key's row (a silent rotation undo) or writing a bogus current-key
    value is tampering (exit 1), never a crash; the writer takes the current key from the key records."""
    async with await LogStore.open(filled_log.data_dir, filled_log.keys) as store:
        assert await store.rotate_data_key() == 2
        await store.append_events([make_event(700)])
        await store.checkpoint()
    conn = attacker(filled_log.db)
    conn.execute("INSERT INTO meta (k, v) VALUES ('current_data_key', 'bogus')")  # TEXT where bytes belong
    conn.close()
    code, output = cli("verify", "--data-dir", filled_log.data_dir)
    assert code == 1 and "meta" in output
    with pytest.raises(LogIntegrityError, match="meta"):
        await LogStore.open(filled_log.data_dir, filled_log.keys)
    conn = attacker(filled_log.db)
    conn.execute("UPDATE meta SET v = x'31' WHERE k = 'current_data_key'")  # a stale pointer: data key 1
    conn.close()
    code, output = cli("verify", "--data-dir", filled_log.data_dir)
    assert code == 1 and "meta" in output
    async with await LogStore.open(filled_log.data_dir, filled_log.keys) as store:
        assert store._current_key == 2  # the pointer is derived from the key records, never read
    conn = attacker(filled_log.db)
    conn.execute("DELETE FROM meta WHERE k = 'current_data_key'")
    conn.execute("DELETE FROM keys WHERE key_id = 2")
    conn.close()
    code, output = cli("verify", "--data-dir", filled_log.data_dir)
    assert code == 1 and "key 2 is missing from the key table" in output


def media_log(log: LogDir) -> tuple[str, bytes]:
    """A log with one image message whose bytes are in the blob store: (blob id, plaintext)."""
    data = b"\x89PNG fake image bytes " * 100

    async def go() -> str:
        async with await LogStore.open(log.data_dir, log.keys) as store:
            blobs = BlobStore(log.data_dir / "blobs", store.media_keys())
            blob_id, sha = await blobs.put(data, "image/png")
            att = Attachment("stored", "image/png", "foto.png", len(data), sha, blob_id)
            event = Event(
                "matrix", "!room:example.org", "$img", Kind.ATTACHMENT, "@minister:example.org",
                1_700_000_000_000, int(time.time() * 1000), {"msgtype": "m.image", "body": "foto.png"},
                None, (att,), {"type": "m.room.message"},
            )  # fmt: skip
            await store.append_events([make_event(1), event, make_event(2)])
            await store.append_events([event])  # a repeat: no second blob record
            await store.checkpoint()
            return blob_id

    return asyncio.run(go()), data


def test_media_blob_is_under_the_proof(empty_log: LogDir) -> None:
    """Storing media appends one BLOB record before the event; verify checks the file keyless and decrypts it
    with the key."""
    blob_id, _ = media_log(empty_log)
    keyless = verify_log(empty_log.data_dir)
    full = verify_log(empty_log.data_dir, empty_log.keys)
    assert keyless.records == full.records == B + 4
    assert full.kinds["blob"] == 1 and full.kinds["attachment"] == 1
    assert (empty_log.data_dir / "blobs" / blob_id[:2] / blob_id).is_file()


@pytest.mark.parametrize("damage", ["delete all", "flip a byte", "swap for another blob"])
def test_deleted_or_altered_media_fail_keyless_verify(empty_log: LogDir, damage: str) -> None:
    """Deleting the blob store, altering a blob or replacing it is tampering keyless (exit 1, naming the blob)."""
    blob_id, _ = media_log(empty_log)
    path = empty_log.data_dir / "blobs" / blob_id[:2] / blob_id
    if damage == "delete all":
        shutil.rmtree(empty_log.data_dir / "blobs")
    elif damage == "flip a byte":
        raw = bytearray(path.read_bytes())
        raw[40] ^= 1
        path.write_bytes(bytes(raw))
    else:
        path.write_bytes(path.read_bytes()[:30] + os.urandom(len(path.read_bytes()) - 30))
    code, output = cli("verify", "--data-dir", empty_log.data_dir)
    assert code == 1, output
    assert blob_id in output


def test_a_stored_attachment_without_a_blob_record_fails_keyed_verify(empty_log: LogDir) -> None:
    """An event that claims a stored attachment no BLOB record vouches for is caught with the key."""

    async def go() -> None:
        async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
            att = Attachment("stored", "image/png", "weg.png", 10, "00" * 32, "ab" * 20)
            event = Event(
                "matrix", "!room:example.org", "$gone", Kind.ATTACHMENT, "@a:example.org", 1, 2, {}, None, (att,), {}
            )
            await store.append_events([event])  # the blob file does not exist: no BLOB record, an ALERT
            await store.checkpoint()

    asyncio.run(go())
    verify_log(empty_log.data_dir)  # keyless cannot see inside the event
    with pytest.raises(LogIntegrityError, match="no earlier record vouches for"):
        verify_log(empty_log.data_dir, empty_log.keys)


def test_frontier_edges_of_checkpoints_are_checked(filled_log: LogDir) -> None:
    """An altered stored edge of an older checkpoint (not one the writer resumes from) is still reported."""
    conn = attacker(filled_log.db)
    edge = conn.execute("SELECT frontier FROM checkpoints WHERE size = 22").fetchone()[0]
    conn.execute("UPDATE checkpoints SET frontier = ? WHERE size = 22", (bytes(edge)[:8] + os.urandom(len(edge) - 8),))
    conn.close()
    with pytest.raises(LogIntegrityError, match="tree edge"):
        verify_log(filled_log.data_dir)
