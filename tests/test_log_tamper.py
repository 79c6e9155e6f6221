"""Tamper tests against a real log (SQLite on disk, PostgreSQL on a real server): verify names the record."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import Check, KeyFileError, LogIntegrityError
from bridge.log import keys as keyfile
from bridge.log.schema import INIT_RECORDS as B  # a new log holds its two key records
from bridge.log.verify import verify_log
from tests.conftest import LogDir, create_log, fill_log
from tests.support.pg import Attacker, rows

#: Every check here holds for the serial walk and for helper processes (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("verify_workers")


@pytest.fixture
def filled_log(any_filled_log: LogDir) -> LogDir:
    """Every tamper test runs against both backends (SQLite, PostgreSQL): one contract."""
    return any_filled_log


@pytest.fixture
def empty_log(any_empty_log: LogDir) -> LogDir:
    return any_empty_log


def attacker(data_dir: Path) -> Attacker:
    """Open the database as someone with write access who drops (SQLite) or disables (PostgreSQL) the
    append-only triggers."""
    return Attacker(data_dir)


def row(conn: Attacker, seq: int) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    r = conn.execute("SELECT dedup, header, commitment, body, leaf FROM records WHERE seq = ?", (seq,)).fetchone()
    return tuple(bytes(x) for x in r)  # type: ignore[return-value]


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def expect_tampered(log: LogDir, seq: int | None, with_key: bool = False) -> LogIntegrityError:
    with pytest.raises(LogIntegrityError) as info:
        verify_log(log.data_dir, log.keys if with_key else None)
    if seq is not None:
        assert info.value.seq == seq, str(info.value)
    return info.value


def test_intact_log_verifies_with_and_without_key(filled_log: LogDir) -> None:
    """An untouched log passes both the keyless audit and the full decrypting check."""
    keyless = verify_log(filled_log.data_dir)
    full = verify_log(filled_log.data_dir, filled_log.keys)
    assert keyless.records == full.records == B + 50
    assert keyless.sealed_size == B + 50 and keyless.checkpoints >= 5
    assert full.decrypted == B + 50 and full.kinds == {"key": 2, "message": 50}
    assert keyless.root == full.root


@pytest.mark.parametrize("column", ["header", "commitment", "body"])
def test_flipped_byte_in_a_record_is_named(filled_log: LogDir, column: str) -> None:
    """One flipped bit in any stored part of record 17 makes verify fail at record 17."""
    conn = attacker(filled_log.data_dir)
    value = conn.execute(f"SELECT {column} FROM records WHERE seq = 17").fetchone()[0]
    conn.execute(f"UPDATE records SET {column} = ? WHERE seq = 17", (flip(bytes(value), len(value) // 2),))
    conn.close()
    expect_tampered(filled_log, 17)


def test_altered_record_with_recomputed_leaf_is_caught_by_the_chain(filled_log: LogDir) -> None:
    """An attacker who also rewrites the stored leaf hash is caught by the next record's chain link."""
    from bridge.log.format import leaf_of

    conn = attacker(filled_log.data_dir)
    _, header, commit, body, _ = row(conn, 20)
    body = flip(body, 3)
    conn.execute("UPDATE records SET body = ?, leaf = ? WHERE seq = 20", (body, leaf_of(header, commit, body)))
    conn.close()
    err = expect_tampered(filled_log, 20)
    assert "chain" in err.reason and err.check == Check.CHAIN
    assert err.expected is not None and err.found is not None and err.expected != err.found  # both leaf hashes


def test_altered_last_record_with_recomputed_leaf_fails_the_checkpoint(filled_log: LogDir) -> None:
    """The last record has no successor; the signed checkpoint's root catches it."""
    from bridge.log.format import leaf_of

    conn = attacker(filled_log.data_dir)
    last = B + 49
    _, header, commit, body, _ = row(conn, last)
    body = flip(body, 0)
    conn.execute("UPDATE records SET body = ?, leaf = ? WHERE seq = ?", (body, leaf_of(header, commit, body), last))
    conn.close()
    err = expect_tampered(filled_log, last)
    assert "checkpoint" in err.reason and err.check == Check.CHECKPOINT_ROOT
    assert len(err.expected or "") == len(err.found or "") == 64  # the signed root and the recomputed one


def test_deleted_row_is_named(filled_log: LogDir) -> None:
    """Deleting record 12 is reported as record 12 missing."""
    conn = attacker(filled_log.data_dir)
    conn.execute("DELETE FROM records WHERE seq = 12")
    conn.close()
    err = expect_tampered(filled_log, 12)
    assert "missing" in err.reason and err.check == Check.MISSING_RECORD
    assert (err.expected, err.found) == ("12", "13")


def test_swapped_rows_are_named(filled_log: LogDir) -> None:
    """Swapping the contents of records 5 and 30 fails at record 5 (out of place)."""
    conn = attacker(filled_log.data_dir)
    a, b = row(conn, 5), row(conn, 30)
    conn.execute("UPDATE records SET dedup = x'00' WHERE seq = 5")
    for seq, values in ((30, a), (5, b)):
        conn.execute(
            "UPDATE records SET dedup = ?, header = ?, commitment = ?, body = ?, leaf = ? WHERE seq = ?",
            (*values, seq),
        )
    conn.close()
    err = expect_tampered(filled_log, 5)
    assert "out of place" in err.reason and err.check == Check.POSITION
    assert (err.expected, err.found) == ("5", "30")


def test_renumbered_rows_are_caught(filled_log: LogDir) -> None:
    """Renumbering rows (seq column) so two records trade places fails at the first of them."""
    conn = attacker(filled_log.data_dir)
    conn.execute("UPDATE records SET seq = -1 WHERE seq = 8")
    conn.execute("UPDATE records SET seq = 8 WHERE seq = 9")
    conn.execute("UPDATE records SET seq = 9 WHERE seq = -1")
    conn.close()
    expect_tampered(filled_log, 8)


def test_truncated_log_is_caught(filled_log: LogDir) -> None:
    """Dropping the last records below the last signed checkpoint is named as truncation."""
    conn = attacker(filled_log.data_dir)
    conn.execute("DELETE FROM records WHERE seq >= 45")
    conn.close()
    err = expect_tampered(filled_log, 45)
    assert "truncated" in err.reason and err.check == Check.TRUNCATED


def test_truncation_with_checkpoints_removed_needs_an_outside_checkpoint(filled_log: LogDir) -> None:
    """Whoever can write the data dir can cut the tail and its checkpoints; a checkpoint kept elsewhere catches it.

    From the data dir alone this looks like a crash before sealing: an unsealed tail, which keyless
    verify refuses unless told it runs beside a bot (--allow-unsealed); checkpoints are exported with
    every package and can be pinned, and then the cut is named.
    """
    from bridge.log import checkpoint

    conn = attacker(filled_log.data_dir)
    kept = conn.execute("SELECT note FROM checkpoints WHERE size = ?", (B + 50,)).fetchone()[0]
    conn.execute("DELETE FROM records WHERE seq >= 45")
    conn.execute("DELETE FROM checkpoints WHERE size > 45")
    conn.close()
    with pytest.raises(LogIntegrityError, match="vouched for by nothing"):
        verify_log(filled_log.data_dir)
    report = verify_log(filled_log.data_dir, allow_unsealed=True)
    assert report.sealed_size == B + 40 and report.unsealed == 45 - (B + 40)
    with pytest.raises(LogIntegrityError) as info:
        verify_log(filled_log.data_dir, anchors=[kept], allow_unsealed=True)
    assert info.value.seq == 45 and "truncated" in info.value.reason
    assert checkpoint.parse_checkpoint_note(kept)[0].size == B + 50


def test_outside_checkpoint_of_another_history_is_caught(filled_log: LogDir, tmp_path: Path) -> None:
    """A pinned checkpoint whose root the log does not reproduce means the history was rewritten."""
    from bridge.log import checkpoint

    note = rows(filled_log.data_dir, "SELECT note FROM checkpoints WHERE size = 32")[0][0]
    cp = checkpoint.parse_checkpoint_note(note)[0]
    forged = checkpoint.Checkpoint(origin=cp.origin, size=32, root=bytes(32), timestamp_ms=cp.timestamp_ms)
    signed = checkpoint.sign_checkpoint(forged, filled_log.keys.key_name, filled_log.keys.signing_key)
    with pytest.raises(LogIntegrityError) as info:
        verify_log(filled_log.data_dir, anchors=[signed])
    assert info.value.seq == 31


def test_altered_checkpoint_signature_is_named(filled_log: LogDir) -> None:
    """A checkpoint note whose signature bytes change fails, naming its tree size."""
    conn = attacker(filled_log.data_dir)
    note = conn.execute("SELECT note FROM checkpoints WHERE size = 32").fetchone()[0]
    body, sig_line = note.rstrip("\n").rsplit("\n", 1)
    prefix, sig = sig_line.rsplit(" ", 1)
    sig = ("B" if sig[10] != "B" else "C").join([sig[:10], sig[11:]])
    conn.execute("UPDATE checkpoints SET note = ? WHERE size = 32", (f"{body}\n{prefix} {sig}\n",))
    conn.close()
    err = expect_tampered(filled_log, 32)
    assert "checkpoint" in err.reason and err.check == Check.CHECKPOINT_SIGNATURE


def test_altered_checkpoint_tree_size_is_named(filled_log: LogDir) -> None:
    """Changing the signed tree size in a note breaks its signature; changing the column is a mismatch."""
    conn = attacker(filled_log.data_dir)
    note = conn.execute("SELECT note FROM checkpoints WHERE size = 22").fetchone()[0]
    lines = note.split("\n")
    lines[1] = "23"
    conn.execute("UPDATE checkpoints SET note = ? WHERE size = 22", ("\n".join(lines),))
    conn.close()
    expect_tampered(filled_log, 22)


def test_altered_checkpoint_size_column_is_named(filled_log: LogDir) -> None:
    """A checkpoint row moved to another tree size no longer matches the size it signs."""
    conn = attacker(filled_log.data_dir)
    conn.execute("UPDATE checkpoints SET size = 25 WHERE size = 22")
    conn.close()
    expect_tampered(filled_log, 25)


def test_checkpoint_signed_by_another_key_fails(filled_log: LogDir, tmp_path: Path) -> None:
    """Re-signing the log with a different key is caught when the expected key is pinned."""
    other = create_log(tmp_path / "other")
    with pytest.raises(LogIntegrityError) as info:
        verify_log(filled_log.data_dir, public_key=(other.keys.key_name, other.keys.public_key))
    assert "signing key" in info.value.reason


def test_swapped_conversation_tag_is_caught_with_key(filled_log: LogDir) -> None:
    """Only the decrypting check sees a dedup index entry moved between records."""
    conn = attacker(filled_log.data_dir)
    d3 = row(conn, 3)[0]
    d4 = row(conn, 4)[0]
    conn.execute("UPDATE records SET dedup = x'00' WHERE seq = 3")
    conn.execute("UPDATE records SET dedup = ? WHERE seq = 4", (d3,))
    conn.execute("UPDATE records SET dedup = ? WHERE seq = 3", (d4,))
    conn.close()
    verify_log(filled_log.data_dir)  # keyless: the index is not covered by the leaf
    expect_tampered(filled_log, 3, with_key=True)


def test_wrong_key_file_is_a_clear_usage_error(filled_log: LogDir, tmp_path: Path) -> None:
    """Verifying with another log's key file is a KeyFileError naming both logs, not a crash."""
    other = create_log(tmp_path / "other")
    with pytest.raises(KeyFileError) as info:
        verify_log(filled_log.data_dir, other.keys)
    assert filled_log.keys.log_id.hex() in str(info.value)


def test_altered_key_table_is_tampering(filled_log: LogDir) -> None:
    """A wrapped data key changed in the key table differs from its KEY record: caught with and without the key."""
    conn = attacker(filled_log.data_dir)
    wrapped = conn.execute("SELECT wrapped FROM keys WHERE key_id = 1").fetchone()[0]
    conn.execute("UPDATE keys SET wrapped = ? WHERE key_id = 1", (flip(bytes(wrapped), 20),))
    conn.close()
    err = expect_tampered(filled_log, 1)
    assert "key table" in err.reason
    err = expect_tampered(filled_log, None, with_key=True)
    assert "key table" in err.reason


def test_unsealed_tail_is_authenticated_with_the_key_refused_without(tmp_path: Path) -> None:
    """Records after the last checkpoint (a crash before sealing) verify with the key (AEAD) and are counted
    as unsealed; keyless, nothing vouches for them, so they fail unless --allow-unsealed."""
    import asyncio

    from bridge.log.store import CheckpointPolicy, LogStore
    from tests.conftest import make_event

    log = create_log(tmp_path)
    fill_log(log, 20)

    async def add() -> None:
        policy = CheckpointPolicy(every_records=1000, every_seconds=3600)
        async with await LogStore.open(log.data_dir, log.keys, policy) as store:
            await store.append_events([make_event(i) for i in range(100, 103)])

    asyncio.run(add())
    report = verify_log(log.data_dir, log.keys)
    assert report.records == B + 23 and report.unsealed == 3
    with pytest.raises(LogIntegrityError, match="vouched for by nothing"):
        verify_log(log.data_dir)
    assert verify_log(log.data_dir, allow_unsealed=True).unsealed == 3


def test_key_file_readable_by_others_is_refused(filled_log: LogDir) -> None:
    """A key file with mode 0644 is refused with the chmod fix in the message."""
    filled_log.key_file.chmod(0o644)
    with pytest.raises(KeyFileError) as info:
        keyfile.load(filled_log.key_file)
    assert "chmod 600" in str(info.value)


async def test_altered_cursor_is_refused_and_caught(empty_log: LogDir) -> None:
    """A sync token changed on disk would make the bot skip events: the store refuses to resume from it
    and verify with the key names it."""
    from bridge.log.store import LogStore
    from tests.conftest import make_event

    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        await store.append_events([make_event(1)], cursor=("matrix:@bot:x", "s100_1"))
    verify_log(empty_log.data_dir, empty_log.keys)
    conn = attacker(empty_log.data_dir)
    conn.execute("UPDATE cursors SET value = 's999999_1'")
    conn.close()
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        with pytest.raises(LogIntegrityError, match="cursor"):
            await store.get_cursor("matrix:@bot:x")
    err = expect_tampered(empty_log, None, with_key=True)
    assert "cursor" in err.reason and err.check == Check.CURSOR


async def test_cursor_values_are_encrypted_at_rest(empty_log: LogDir) -> None:
    """A source cursor may hold room, event and session ids (the Matrix source's state document): it is stored
    sealed, so none of it is readable in the database file, and it reads back exactly."""
    from bridge.log.store import LogStore
    from tests.conftest import make_event

    marker = '{"v":1,"token":"s1_GEHEIM","pending":[["!GEHEIMroom:example.org","$GEHEIMevent"]]}'
    async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
        await store.append_events([make_event(1)], cursor=("matrix:@bot:x", marker))
        assert await store.get_cursor("matrix:@bot:x") == marker
    for path in empty_log.data_dir.iterdir():
        if path.is_file():
            assert b"GEHEIM" not in path.read_bytes(), path.name
    verify_log(empty_log.data_dir, empty_log.keys)  # the sealed cursor checks out with the key


@pytest.mark.parametrize("with_key", [False, True])
@pytest.mark.parametrize("column", ["dedup", "header", "commitment", "body", "leaf"])
def test_a_column_stored_as_text_is_named_on_the_lean_path(filled_log: LogDir, column: str, with_key: bool) -> None:
    """A column of an event record rewritten as TEXT (the same hex digits a careless tool would store) is
    named as damage, with and without the key: verify's lean path for the common record must not skip the
    type check the full checks make (issue 15)."""
    conn = attacker(filled_log.data_dir)
    value = conn.execute(f"SELECT {column} FROM records WHERE seq = 17").fetchone()[0]
    conn.execute(f"UPDATE records SET {column} = ? WHERE seq = 17", (bytes(value).hex(),))
    conn.close()
    if filled_log.backend == "postgresql" and column == "dedup" and not with_key:
        # Other bytes in the keyed duplicate tag: only the index key can tell (the key-less audit covers what
        # the tree covers; the tag is an index beside it), so this is caught with the key only.
        verify_log(filled_log.data_dir)
        return
    err = expect_tampered(filled_log, 17, with_key)
    # SQLite keeps the TEXT value (the type check names it); PostgreSQL's bytea column takes the digits' ASCII
    # bytes instead, so the record's bytes changed and the record checks name it.
    assert err.check == Check.DATABASE if filled_log.backend == "sqlite" else err.check != Check.DATABASE
