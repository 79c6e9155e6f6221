"""Record format version 2: an encrypted record's payload is compressed before encryption (issue 15, size).

Round trips of both versions, the bounds on decompression (a record crafted by a key holder must not
allocate past the limit), tampering with a compressed record, and a log written by the code before this
change (tests/fixtures/log-v1) that keeps verifying and reading after the current writer appends to it.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import Check, LogIntegrityError
from bridge.events import canonical_bytes
from bridge.log import audit, compression, crypto, format
from bridge.log import keys as keyfile
from bridge.log.reader import iter_events, recover_keys
from bridge.log.store import CheckpointPolicy, LogStore
from bridge.log.verify import verify_log
from bridge.log.view import LogView
from tests.conftest import LogDir, make_event

FIXTURE = Path(__file__).parent / "fixtures" / "log-v1"

#: The SHA-256 of `compression.DICTIONARY_V2`. Every version-2 record decompresses with exactly these bytes:
#: a change to the dictionary needs a new format version, not a new value here.
DICTIONARY_V2_SHA256 = "a86d5d705e1a580715527f577515deab3528c7e4d793cb16197f6a350d68a99c"


def seal(payload: bytes, compress: bool = True) -> tuple[bytes, format.RecordHeader, bytes, bytes, bytes, bytes]:
    """(key, header, header bytes, commitment, body, log id) of one sealed EVENT record."""
    key, log_id = os.urandom(32), os.urandom(16)
    header_b, commit, body, _ = format.seal_record(
        crypto.Sealer(key), format.ad_prefix(log_id), format.RecordType.EVENT, 3, 1, 1, os.urandom(16),
        os.urandom(12), bytes(32), os.urandom(16), payload, compress=compress,
    )  # fmt: skip
    return key, format.unpack_header(header_b), header_b, commit, body, log_id


def seal_frame(frame: bytes) -> tuple[bytes, format.RecordHeader, bytes, bytes, bytes, bytes]:
    """A version-2 record holding `frame` as it is: what only a holder of the data key could write. Its
    commitment names 64 MiB + 1 zero bytes (what the bomb claims), so only the bound can refuse it."""
    key, log_id, nonce, salt = os.urandom(32), os.urandom(16), os.urandom(12), os.urandom(16)
    header = format.RecordHeader(2, format.RecordType.EVENT, 3, 1, 1, os.urandom(16), nonce, bytes(32))
    header_b = header.pack()
    commit = hashlib.sha256(salt + bytes(compression.MAX_PAYLOAD + 1)).digest()
    body = crypto.seal(key, nonce, salt + frame, format.associated_data(log_id, header_b, commit))
    return key, header, header_b, commit, body, log_id


def open_(key: bytes, header: format.RecordHeader, header_b: bytes, commit: bytes, body: bytes, log_id: bytes) -> bytes:
    return format.open_record(log_id, crypto.sealers({1: key}), header, header_b, commit, body)


@settings(max_examples=200)
@given(payload=st.binary(max_size=4096) | st.text(max_size=2000).map(str.encode), compress=st.booleans())
def test_any_payload_seals_and_opens_in_both_versions(payload: bytes, compress: bool) -> None:
    """Any payload comes back from `open_record`, from a version-1 and a version-2 record alike; the
    commitment is of the payload itself in both, so a package's (salt, payload) recomputes it."""
    key, header, header_b, commit, body, log_id = seal(payload, compress)
    assert header.version == (format.VERSION_COMPRESSED if compress else format.VERSION_PLAIN)
    assert open_(key, header, header_b, commit, body, log_id) == payload
    plaintext = crypto.open_sealed(key, header.nonce, body, format.associated_data(log_id, header_b, commit))
    stored = plaintext[crypto.SALT_BYTES :]
    assert stored == (compression.compress(payload) if compress else payload)
    assert commit == format.commitment(plaintext[: crypto.SALT_BYTES] + payload)


def test_a_payload_over_the_limit_is_stored_uncompressed() -> None:
    """The writer never makes a record the bound would refuse: a payload over 64 MiB is sealed as version 1."""
    payload = os.urandom(1024) * (compression.MAX_PAYLOAD // 1024 + 1)
    key, header, header_b, commit, body, log_id = seal(payload)
    assert header.version == format.VERSION_PLAIN and len(body) == len(payload) + crypto.SALT_BYTES + 16
    assert open_(key, header, header_b, commit, body, log_id) == payload


@given(payload=st.binary(max_size=4096))
def test_compression_round_trips_any_bytes(payload: bytes) -> None:
    frame = compression.compress(payload)
    assert zstandard.frame_content_size(frame) == len(payload)
    assert compression.decompress(frame) == payload


def test_an_event_payload_shrinks() -> None:
    """A typical event (raw and normalised body, both in the payload) compresses to well under half."""
    payload = canonical_bytes(make_event(1, body="Graag je reactie op de concept-kamerbrief voor morgen tien uur."))
    frame = compression.compress(payload)
    assert len(frame) * 2 < len(payload), (len(frame), len(payload))


def test_the_dictionary_is_frozen_and_holds_no_chat_content() -> None:
    """The version-2 dictionary is the one this test names (change it only with a new format version), and it
    is structure only: no message text of the fixtures it was written from."""
    assert hashlib.sha256(compression.DICTIONARY_V2).hexdigest() == DICTIONARY_V2_SHA256
    for sample in (b"Goedemorgen", b"zie de nota", b"Pizza", b"party", b"graag reactie", b"Beleidsoverleg"):
        assert sample not in compression.DICTIONARY_V2


CRAFTED: dict[str, tuple[Callable[[], bytes], str]] = {
    "bomb": (lambda: zstandard.ZstdCompressor().compress(bytes(compression.MAX_PAYLOAD + 1)), "more than the limit"),
    "no-size": (lambda: zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 100), "state its size"),
    "trailing": (lambda: compression.compress(b"payload") + b"trailing", "does not decompress"),
    "garbage": (lambda: b"not a zstd frame at all", "not a zstd frame"),
    "empty": (lambda: b"", "not a zstd frame"),
    "truncated": (lambda: compression.compress(b"payload" * 50)[:-4], "does not decompress"),
}


@pytest.mark.parametrize("crafted", list(CRAFTED))
def test_a_crafted_compressed_record_is_refused_and_named(crafted: str) -> None:
    """A version-2 record that authenticates (written with the data key) but holds no bounded frame of ours
    is refused before decompressing past the limit, as a payload error of that record, not a crash."""
    make, message = CRAFTED[crafted]
    key, header, header_b, commit, body, log_id = seal_frame(make())
    with pytest.raises(format.PayloadFormError, match=message):
        open_(key, header, header_b, commit, body, log_id)
    secrets = audit.Secrets(log_id, os.urandom(32), {1: key})
    with pytest.raises(LogIntegrityError) as info:
        audit.check_plaintext(3, secrets, header, header_b, commit, body, os.urandom(16))
    assert info.value.check == Check.PAYLOAD and info.value.seq == 3
    assert audit.QuickEvents(secrets).kind(header_b, commit, body, os.urandom(16)) == ""


def test_a_flipped_byte_in_a_compressed_record_is_caught() -> None:
    """Any flipped bit of a version-2 body fails authentication (never reaches the decompressor); the version
    byte flipped to 1 makes the associated data differ, so it fails too."""
    payload = canonical_bytes(make_event(1))
    key, header, header_b, commit, body, log_id = seal(payload)
    for at in range(len(body)):
        bad = body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :]
        with pytest.raises(format.RecordAuthError, match="does not authenticate"):
            open_(key, header, header_b, commit, bad, log_id)
    as_v1 = b"\x01" + header_b[1:]
    with pytest.raises(format.RecordAuthError, match="does not authenticate"):
        open_(key, format.unpack_header(as_v1), as_v1, commit, body, log_id)


def test_the_writer_compresses_events_and_keeps_clear_records_plain(empty_log: LogDir) -> None:
    """Events the writer seals are version 2; KEY records stay version 1 (keyless verify reads them)."""

    async def go() -> None:
        async with await LogStore.open(empty_log.data_dir, empty_log.keys) as store:
            await store.append_events([make_event(i) for i in range(5)])
            await store.checkpoint()

    asyncio.run(go())
    conn = sqlite3.connect(empty_log.db)
    try:
        headers = [format.unpack_header(bytes(h)) for (h,) in conn.execute("SELECT header FROM records ORDER BY seq")]
    finally:
        conn.close()
    key, event = format.RecordType.KEY, format.RecordType.EVENT
    assert [(h.type, h.version) for h in headers] == [(key, 1)] * 2 + [(event, 2)] * 5
    assert verify_log(empty_log.data_dir, empty_log.keys).decrypted == 7
    assert [e.event_id for _, e in iter_events(empty_log.data_dir, empty_log.keys)] == [f"$event{i}" for i in range(5)]


def old_log(tmp_path: Path) -> LogDir:
    """A copy of the log written by the code before format version 2 (tests/fixtures/log-v1)."""
    data_dir, key_file = tmp_path / "data", tmp_path / "keys" / "chatarchief.key"
    data_dir.mkdir(mode=0o700)
    key_file.parent.mkdir(mode=0o700)
    (data_dir / "log.sqlite3").write_bytes(gzip.decompress((FIXTURE / "log.sqlite3.gz").read_bytes()))
    shutil.copyfile(FIXTURE / "chatarchief.key", key_file)
    key_file.chmod(0o600)
    return LogDir(data_dir, key_file, keyfile.load(key_file))


def test_a_log_written_before_version_2_verifies_and_reads_after_new_appends(tmp_path: Path) -> None:
    """The old log verifies as it is; after the current writer appends (version-2 records) the mixed log
    verifies with and without the key, every event reads back through the reader and the view, and a
    duplicate of an old event is still found (its record is version 1)."""
    log = old_log(tmp_path)
    assert verify_log(log.data_dir, log.keys).decrypted == 14

    async def go() -> None:
        policy = CheckpointPolicy(every_records=4, every_seconds=3600)
        async with await LogStore.open(log.data_dir, log.keys, policy) as store:
            again = await store.append_events([make_event(3), make_event(11)])  # already in the old log
            assert again.appended == 0, again
            await store.append_events([make_event(i) for i in range(12, 20)])
            await store.checkpoint()

    asyncio.run(go())
    conn = sqlite3.connect(log.db)
    try:
        versions = [bytes(h)[0] for (h,) in conn.execute("SELECT header FROM records ORDER BY seq")]
        _, data_keys = recover_keys(conn, log.keys)
    finally:
        conn.close()
    assert versions == [1] * 14 + [2] * 8
    assert verify_log(log.data_dir).records == 22
    assert verify_log(log.data_dir, log.keys).decrypted == 22
    events = [(e.event_id, e.content["body"]) for _, e in iter_events(log.data_dir, log.keys)]
    assert events == [(f"$event{i}", f"message {i}") for i in range(20)]
    with LogView(log.data_dir, log.keys) as view:
        payloads = [r.payload for r in view.records(0, 22)]
    assert payloads[2:] == [canonical_bytes(make_event(i)) for i in range(20)]
    assert data_keys  # the old key records unwrap with the old key file


def test_a_tampered_compressed_record_in_a_log_is_named(tmp_path: Path) -> None:
    """An insider without the key flipping a byte of a version-2 body: keyless verify names the record."""
    log = old_log(tmp_path)

    async def go() -> None:
        async with await LogStore.open(log.data_dir, log.keys) as store:
            await store.append_events([make_event(i) for i in range(12, 16)])
            await store.checkpoint()

    asyncio.run(go())
    conn = sqlite3.connect(log.db, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS records_no_update")
    (body,) = conn.execute("SELECT body FROM records WHERE seq = 16").fetchone()
    body = bytes(body)
    conn.execute("UPDATE records SET body = ? WHERE seq = 16", (body[:20] + bytes([body[20] ^ 1]) + body[21:],))
    conn.close()
    for keys in (None, log.keys):
        with pytest.raises(LogIntegrityError) as info:
            verify_log(log.data_dir, keys)
        assert info.value.seq == 16 and info.value.check == Check.LEAF, str(info.value)


def _forge_the_last_record(log: LogDir, events: int, plaintext: bytes, commit: bytes) -> int:
    """What a key holder with write access can do: append `events` events, then replace the last (version-2)
    record's commitment and ciphertext by `plaintext` sealed under its data key with `commit`, and its leaf to
    match (the hash chain's next link does not exist). Returns the forged record's seq."""
    from tests.support.pg import Attacker

    async def go() -> None:
        async with await LogStore.open(log.data_dir, log.keys) as store:
            await store.append_events([make_event(i) for i in range(events)])

    asyncio.run(go())
    with LogView(log.data_dir, log.keys) as view:
        last = view.size() - 1
        header_b = view.leaf_parts(last)[0]
        header = format.unpack_header(header_b)
        data_key = view._data_keys[header.key_id]
    assert header.version == format.VERSION_COMPRESSED
    body = crypto.seal(data_key, header.nonce, plaintext, format.ad_prefix(log.keys.log_id) + header_b + commit)
    leaf = hashlib.sha256(b"\x00" + header_b + commit + hashlib.sha256(body).digest()).digest()
    conn = Attacker(log.data_dir)
    try:
        conn.execute("UPDATE records SET commitment = ?, body = ?, leaf = ? WHERE seq = ?", (commit, body, leaf, last))
    finally:
        conn.close()
    return last


@pytest.mark.parametrize("crafted", [*CRAFTED, "short"])
def test_the_log_view_refuses_a_crafted_compressed_record_with_the_formats_error(
    empty_log: LogDir, crafted: str
) -> None:
    """`LogView.records` opens version-2 records without `format.expand` (no concatenation, no split after it),
    yet a record that authenticates but holds no frame of ours (or a plaintext shorter than its salt) is
    refused exactly as `format.expand` refuses it: a LogIntegrityError of that record, its message and check;
    the records before it come through."""
    plaintext = os.urandom(10) if crafted == "short" else os.urandom(crypto.SALT_BYTES) + CRAFTED[crafted][0]()
    with pytest.raises(format.RecordAuthError) as want:
        format.expand(plaintext)
    last = _forge_the_last_record(empty_log, 3, plaintext, hashlib.sha256(plaintext).digest())
    size = last + 1
    got: list[int] = []
    with LogView(empty_log.data_dir, empty_log.keys) as view, pytest.raises(LogIntegrityError) as info:
        for rec in view.records(0, size):
            got.append(rec.seq)
    assert got == list(range(last))
    assert info.value.seq == last
    assert info.value.reason == str(want.value)
    assert info.value.check == audit.auth_check(want.value)


def test_the_log_view_refuses_a_compressed_record_whose_commitment_names_other_bytes(empty_log: LogDir) -> None:
    """A version-2 record that authenticates and decompresses but whose commitment is not SHA-256(salt ||
    payload) is refused as a commitment mismatch of that record (what a key holder's forgery would give)."""
    salt, payload = os.urandom(crypto.SALT_BYTES), canonical_bytes(make_event(7))
    commit = hashlib.sha256(salt + payload + b"!").digest()
    last = _forge_the_last_record(empty_log, 2, salt + compression.compress(payload), commit)
    with LogView(empty_log.data_dir, empty_log.keys) as view, pytest.raises(LogIntegrityError) as info:
        list(view.records(0, last + 1))
    assert (info.value.seq, info.value.check) == (last, Check.COMMITMENT)
    assert info.value.reason == "plaintext does not match the stored commitment"
    assert info.value.found == hashlib.sha256(salt + payload).hexdigest()
