"""Signing-key rotation (issue 13, item 1): a SIGNING_KEY record signed by the old and the new key, a
checkpoint over it signed by both, and verifiers that follow the chain from the pinned key.

The attacks use only what an insider can touch: the data dir (SQLite, inserting rows: the triggers forbid
UPDATE and DELETE, not INSERT) and whichever signing key they hold.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from bridge.archive.package import snapshot
from bridge.archive.range import Month
from bridge.errors import Check, KeyFileError, LogIntegrityError
from bridge.log import checkpoint, crypto, format, merkle, rotation
from bridge.log import keys as keyfile
from bridge.log import store as store_module
from bridge.log.control import ControlServer
from bridge.log.schema import frontier_bytes
from bridge.log.store import LogStore
from bridge.log.verify import verify_log
from bridge.log.writer import open_writer
from bridge.witness.client import Witnessing
from bridge.witness.config import LogEntry
from tests.conftest import LogDir, create_log, fill_log, make_event
from tests.support.archive_log import OPTIONS, append, create_archive_log, event, ms, seal_for
from tests.test_archive_verify import copy, rebag
from tests.test_cli import SAMPLE, cli
from tests.test_witness_server import make_witness, running, witnessing

#: Every check here holds for the serial walk and for helper processes (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("verify_workers")


def rotate(log: LogDir, new: Ed25519PrivateKey) -> int:
    async def go() -> int:
        async with await LogStore.open(log.data_dir, log.keys) as store:
            seq, _ = await store.rotate_signing_key(new)
            return seq

    return asyncio.run(go())


def append_with(log: LogDir, signer: Ed25519PrivateKey, n: int, first: int) -> None:
    """The log's writer, signing with `signer` (as the bot does after a rotation)."""

    async def go() -> None:
        async with await LogStore.open(log.data_dir, log.keys.with_signer(signer)) as store:
            await store.append_events([make_event(i) for i in range(first, first + n)])
            await store.checkpoint()

    asyncio.run(go())


def leaves(db: Path) -> list[bytes]:
    conn = sqlite3.connect(db)
    try:
        return [bytes(r[0]) for r in conn.execute("SELECT leaf FROM records ORDER BY seq")]
    finally:
        conn.close()


def forge(log: LogDir, rows: list[tuple[bytes, bytes, bytes, bytes]], sign: list[Ed25519PrivateKey]) -> int:
    """Insert records (dedup, header, commitment, body) exactly as the writer would store them and a checkpoint
    over them signed by `sign`: what an insider holding those keys can do. Returns the checkpoint's size."""
    all_leaves = leaves(log.db)
    frontier = merkle.Frontier()
    for leaf in all_leaves:
        frontier.append(leaf)
    conn = sqlite3.connect(log.db)
    try:
        for dedup, header, commit, body in rows:
            leaf = format.leaf_of(header, commit, body)
            seq = frontier.size
            conn.execute(
                "INSERT INTO records (seq, dedup, header, commitment, body, leaf) VALUES (?, ?, ?, ?, ?, ?)",
                (seq, dedup, header, commit, body, leaf),
            )
            frontier.append(leaf)
        name = log.keys.key_name
        cp = checkpoint.Checkpoint(name, frontier.size, frontier.root(), 1_800_000_000_000)
        note = checkpoint.sign_checkpoint(cp, name, sign[0])
        for key in sign[1:]:
            note = rotation.cosign_note(note, name, key)
        conn.execute(
            "INSERT INTO checkpoints (size, created_ms, note, frontier) VALUES (?, ?, ?, ?)",
            (cp.size, cp.timestamp_ms, note, frontier_bytes(frontier)),
        )
        conn.commit()
    finally:
        conn.close()
    return frontier.size


def drop_last_checkpoint(log: LogDir) -> int:
    """Delete the newest checkpoint (the insider drops the trigger first); returns its size."""
    conn = sqlite3.connect(log.db)
    try:
        conn.execute("DROP TRIGGER checkpoints_no_delete")
        (last,) = conn.execute("SELECT MAX(size) FROM checkpoints").fetchone()
        conn.execute("DELETE FROM checkpoints WHERE size = ?", (last,))
        conn.commit()
    finally:
        conn.close()
    return int(last)


def rotation_row(log: LogDir, rec: rotation.SigningKeyRecord) -> tuple[bytes, bytes, bytes, bytes]:
    prev = leaves(log.db)[-1]
    header, commit, body, _ = format.seal_clear(
        format.RecordType.SIGNING_KEY, rec.seq, rec.created_ms, 0, prev, os.urandom(16), rec.encode()
    )
    return rotation.dedup_of(rec.new_vkey), header, commit, body


def size_of(log: LogDir) -> int:
    return len(leaves(log.db))


def failure(log: LogDir, keys: bool = False) -> LogIntegrityError:
    with pytest.raises(LogIntegrityError) as caught:
        verify_log(log.data_dir, log.keys if keys else None)
    return caught.value


# -- the honest path -------------------------------------------------------------------------------------


def test_rotation_record_and_checkpoints_verify_from_the_pinned_key(filled_log: LogDir) -> None:
    """After a rotation the log verifies (keyless and with the key) from the ORIGINAL key; the checkpoint over
    the record carries both keys' signatures; later checkpoints only the new key's; the old key no longer signs."""
    old = filled_log.keys.signing_key
    new = Ed25519PrivateKey.generate()
    seq = rotate(filled_log, new)
    append_with(filled_log, new, 5, 100)
    report = verify_log(filled_log.data_dir, None)
    assert report.rotations == [seq]
    assert report.signer == checkpoint.format_vkey(filled_log.keys.key_name, new.public_key())
    assert verify_log(filled_log.data_dir, filled_log.keys).kinds["signing-key"] == 1
    conn = sqlite3.connect(filled_log.db)
    notes = dict(conn.execute("SELECT size, note FROM checkpoints").fetchall())
    conn.close()
    name = filled_log.keys.key_name
    for key in (old, new):
        checkpoint.verify_checkpoint_note(notes[seq + 1], name, key.public_key())  # both signed it
    assert seq in notes  # the old key's last checkpoint covers everything before the record
    later = notes[max(notes)]
    checkpoint.verify_checkpoint_note(later, name, new.public_key())
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.verify_checkpoint_note(later, name, old.public_key())
    with pytest.raises(KeyFileError, match="retired by rotation record"):
        append_with(filled_log, old, 1, 200)


def test_rotate_signing_key_cli_makes_the_key_and_the_running_bot_signs_with_it(tmp_path: Path) -> None:
    """The command makes NEW (0600) and NEW.pub; the old signing key file is then refused (exit 2 naming the
    retired key); verify pinned to the original KEY.pub passes and names the rotation."""
    keys = tmp_path / "secrets"
    keys.mkdir(mode=0o700)
    data, key, new = tmp_path / "data", keys / "ca.key", keys / "new.signing"
    assert cli("init", "--data-dir", data, "--key-file", key)[0] == 0
    assert cli("import", "--data-dir", data, "--key-file", key, SAMPLE)[0] == 0
    code, out, err = cli("rotate-signing-key", "--data-dir", data, "--key-file", key, "--new-signing-key", new)
    assert code == 0, err
    assert new.stat().st_mode & 0o777 == 0o600 and keyfile.public_path(new).exists()
    assert keyfile.public_path(new).read_text().strip() in out
    code, _, err = cli("rotate-key", "--data-dir", data, "--key-file", key)  # signs: with the retired key
    assert code == 2 and "retired by rotation record" in err
    code, out, err = cli("verify", "--data-dir", data, "--public-key", keyfile.public_path(key))
    assert code == 0 and "rotated at record" in out, err
    code, out, err = cli("verify", "--data-dir", data, "--public-key", keyfile.public_path(new))
    assert code == 1 and "original KEY.pub" in out + err  # a later key is never the anchor
    # rotating again from the retired key is refused before anything is appended
    before = size_of(LogDir(data, key, keyfile.load(key)))
    code, _, err = cli(
        "rotate-signing-key", "--data-dir", data, "--key-file", key, "--new-signing-key", keys / "third.signing"
    )
    assert code == 2 and "retired" in err
    assert size_of(LogDir(data, key, keyfile.load(key))) == before


async def test_rotation_while_the_bot_runs_is_handed_to_it(empty_log: LogDir, tmp_path: Path) -> None:
    """(c) With the writer lock held by a running bot, the rotation goes over the control socket: the bot
    loads the new key file itself, appends the record, and signs its next checkpoints with the new key while
    its capture goes on."""
    new_file = tmp_path / "keys" / "new.signing"
    new, created = keyfile.new_signing_key(new_file, empty_log.keys)
    assert created
    async with (
        await LogStore.open(empty_log.data_dir, empty_log.keys) as store,
        ControlServer(empty_log.data_dir, store),
    ):
        await store.append_events([make_event(0)])
        async with open_writer(empty_log.data_dir, empty_log.keys) as writer:
            assert writer.remote_pid == os.getpid()
            seq, vkey = await writer.rotate_signing_key(new_file)
        await store.append_events([make_event(1)])
        note = await store.checkpoint()
    assert vkey == checkpoint.format_vkey(empty_log.keys.key_name, new.public_key())
    checkpoint.verify_checkpoint_note(note, empty_log.keys.key_name, new.public_key())
    assert verify_log(empty_log.data_dir, empty_log.keys).rotations == [seq]


# -- attacks ---------------------------------------------------------------------------------------------


def test_a_key_not_rotated_in_cannot_forge_a_rotation(filled_log: LogDir) -> None:
    """(a) An insider holding only a key of their own (not the current one) writes a rotation record to it,
    with a garbage signature for the old key, and a checkpoint signed by their key: verify exits 1 naming
    the rotation record."""
    mine = Ed25519PrivateKey.generate()
    name = filled_log.keys.key_name
    seq = size_of(filled_log)
    old_vkey = filled_log.keys.vkey()
    new_vkey = checkpoint.format_vkey(name, mine.public_key())
    message = rotation.rotation_message(name, seq, old_vkey, new_vkey)
    rec = rotation.SigningKeyRecord(seq, 1, old_vkey, new_vkey, mine.sign(message), mine.sign(message))
    forge(filled_log, [rotation_row(filled_log, rec)], [mine])
    err = failure(filled_log)
    assert err.seq == seq and err.check == Check.SIGNING_KEY and "old (current) key" in str(err)
    assert failure(filled_log, keys=True).seq == seq


def test_a_checkpoint_by_a_key_not_yet_rotated_in_fails(filled_log: LogDir) -> None:
    """(a) A key that will be rotated in later (or any other key) signs a checkpoint before its rotation:
    verify exits 1 naming that checkpoint."""
    size = drop_last_checkpoint(filled_log)
    assert forge(filled_log, [], [Ed25519PrivateKey.generate()]) == size
    err = failure(filled_log)
    assert err.seq == size and err.check == Check.CHECKPOINT_SIGNATURE


def test_the_new_key_cannot_sign_before_its_rotation(filled_log: LogDir) -> None:
    """(a) The NEW key signs a checkpoint at a size before its rotation record with a time before the rotation
    (a checkpoint signed by a key not yet rotated in): exit 1 naming it. The same key sealing that prefix
    after the rotation (a month-end seal) is accepted."""
    new = Ed25519PrivateKey.generate()
    seq = rotate(filled_log, new)
    assert drop_last_checkpoint_below(filled_log, seq + 1) == seq
    name = filled_log.keys.key_name
    frontier = merkle.extend(merkle.Frontier(), leaves(filled_log.db)[:seq])
    for when, ok in ((1_000, False), (4_000_000_000_000, True)):
        cp = checkpoint.Checkpoint(name, seq, frontier.root(), when)
        conn = sqlite3.connect(filled_log.db)
        conn.execute("DELETE FROM checkpoints WHERE size = ?", (seq,))
        conn.execute(
            "INSERT INTO checkpoints (size, created_ms, note, frontier) VALUES (?, ?, ?, ?)",
            (seq, when, checkpoint.sign_checkpoint(cp, name, new), frontier_bytes(frontier)),
        )
        conn.commit()
        conn.close()
        if ok:
            assert verify_log(filled_log.data_dir, None).rotations == [seq]
        else:
            err = failure(filled_log)
            assert err.seq == seq and "before that rotation" in str(err)


def drop_last_checkpoint_below(log: LogDir, size: int) -> int:
    conn = sqlite3.connect(log.db)
    try:
        conn.execute("DROP TRIGGER checkpoints_no_delete")
        (last,) = conn.execute("SELECT MAX(size) FROM checkpoints WHERE size < ?", (size,)).fetchone()
        conn.execute("DELETE FROM checkpoints WHERE size = ?", (last,))
        conn.commit()
    finally:
        conn.close()
    return int(last)


def test_the_retired_key_cannot_rotate_again(filled_log: LogDir) -> None:
    """(a) Only the OLD key after a rotation: a second rotation record from it to a key of the insider's
    (signed by both of those) and a checkpoint by both: exit 1 naming the rotation record."""
    old = filled_log.keys.signing_key
    rotate(filled_log, Ed25519PrivateKey.generate())
    seq = size_of(filled_log)
    third = Ed25519PrivateKey.generate()
    rec = rotation.make_record(filled_log.keys.key_name, seq, 1, old, third)
    forge(filled_log, [rotation_row(filled_log, rec)], [old, third])
    err = failure(filled_log)
    assert err.seq == seq and err.check == Check.SIGNING_KEY and "not the current one" in str(err)


def test_an_old_key_checkpoint_after_the_rotation_fails(filled_log: LogDir) -> None:
    """(a) The retired key signs a checkpoint at a size after its rotation (over records appended by the
    honest writer): verify exits 1 naming that checkpoint."""
    old = filled_log.keys.signing_key
    new = Ed25519PrivateKey.generate()
    rotate(filled_log, new)
    append_with(filled_log, new, 3, 100)
    last = drop_last_checkpoint(filled_log)
    forge(filled_log, [], [old])  # re-signs the same tree with the retired key
    err = failure(filled_log)
    assert err.seq == last and err.check == Check.CHECKPOINT_SIGNATURE


def test_a_dropped_rotation_record_is_caught(filled_log: LogDir) -> None:
    """The rotation record's dedup entry altered (so the chain would miss it): verify exits 1 (the new key's
    checkpoints no longer verify under the pinned key, or the record is named)."""
    seq = rotate(filled_log, Ed25519PrivateKey.generate())
    conn = sqlite3.connect(filled_log.db)
    conn.execute("DROP TRIGGER records_no_update")
    conn.execute("UPDATE records SET dedup = ? WHERE seq = ?", (os.urandom(32), seq))
    conn.commit()
    conn.close()
    err = failure(filled_log)
    assert err.seq in (seq, seq + 1)


# -- the record format -----------------------------------------------------------------------------------


@given(st.integers(0, 2**40), st.integers(0, 2**45))
def test_a_rotation_record_round_trips_and_any_change_fails(seq: int, created: int) -> None:
    """Canonical encoding round-trips; flipping any byte of either signature, or naming another position,
    makes the chain refuse it."""
    name = keyfile.key_name_for(bytes(16))
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    rec = rotation.make_record(name, seq, created, old, new)
    assert rotation.parse_record(rec.encode()) == rec
    chain = rotation.KeyChain((name, old.public_key()))
    chain.copy().rotate(seq, rec)
    for bad in (
        rotation.SigningKeyRecord(seq, created, rec.old_vkey, rec.new_vkey, rec.new_signature, rec.new_signature),
        rotation.SigningKeyRecord(seq, created, rec.old_vkey, rec.new_vkey, rec.old_signature, rec.old_signature),
        rotation.SigningKeyRecord(seq + 1, created, rec.old_vkey, rec.new_vkey, rec.old_signature, rec.new_signature),
    ):
        with pytest.raises(LogIntegrityError):
            chain.copy().rotate(bad.seq, bad)
    assert crypto.hmac_equal(rotation.dedup_of(rec.new_vkey)[:5], rotation.DEDUP_PREFIX)


@given(st.binary(max_size=300))
def test_rotation_payload_parser_never_crashes(data: bytes) -> None:
    try:
        rec = rotation.parse_record(data)
    except rotation.RotationError:
        return
    assert rec.encode() == data


def test_fill_log_helper_still_verifies(tmp_path: Path) -> None:
    """Sanity for the helpers above: a log without rotations reports none."""
    log = create_log(tmp_path)
    fill_log(log, 3)
    assert verify_log(log.data_dir, None).rotations == []


# -- packages (b) ----------------------------------------------------------------------------------------


@pytest.fixture
def rotated_january(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LogDir, Path, Ed25519PrivateKey]:
    """Chat in January; on 25 January the signing key is rotated; more chat follows in January and February
    (signed by the new key), so January's package holds the rotation record and its end checkpoint is the
    new key's."""
    log = create_archive_log(tmp_path)
    append(log, monkeypatch, [(ms(2024, 1, 5), [event(n) for n in range(4)])])
    new = Ed25519PrivateKey.generate()
    monkeypatch.setattr(store_module, "now_ms", lambda: ms(2024, 1, 25))
    rotate(log, new)
    rotated = LogDir(log.data_dir, log.key_file, log.keys.with_signer(new))
    later = [(ms(2024, 1, 28), [event(n) for n in range(4, 8)]), (ms(2024, 2, 3), [event(n) for n in range(8, 12)])]
    append(rotated, monkeypatch, later)
    monkeypatch.undo()
    pkg = snapshot(
        log.data_dir, rotated.keys, Month(2024, 1), tmp_path / "pkg" / "jan", OPTIONS, seal=seal_for(rotated)
    )
    return log, pkg.path, new


def test_a_package_after_a_rotation_verifies_with_the_original_key(
    rotated_january: tuple[LogDir, Path, Ed25519PrivateKey],
) -> None:
    """(b) The package carries proof/signing-keys.json; `verify-package --public-key KEY.pub` (the ORIGINAL
    key, nothing else) passes; LEESMIJ says what the file is for."""
    log, pkg, new = rotated_january
    doc = json.loads((pkg / "data" / "proof" / "signing-keys.json").read_text())
    assert [r["signing_key"]["new_vkey"] for r in doc["rotations"]] == [
        checkpoint.format_vkey(log.keys.key_name, new.public_key())
    ]
    end_note = (pkg / "data" / "proof" / "checkpoint-end.txt").read_text()
    checkpoint.verify_checkpoint_note(end_note, log.keys.key_name, new.public_key())
    code, out = verify_pkg(log, pkg)
    assert code == 0, out
    assert "signing-keys.json" in (pkg / "LEESMIJ.txt").read_text()


def test_a_package_without_its_rotation_proof_fails(
    rotated_january: tuple[LogDir, Path, Ed25519PrivateKey], tmp_path: Path
) -> None:
    """(b) proof/signing-keys.json removed (and the bag re-made): the end checkpoint, signed by the new key,
    does not verify under the pinned key: exit 1 naming it."""
    log, pkg, _ = rotated_january
    bad = copy(pkg, tmp_path)
    (bad / "data" / "proof" / "signing-keys.json").unlink()
    rebag(bad)
    code, out = verify_pkg(log, bad)
    assert code == 1 and "end checkpoint" in out, out


def test_a_package_with_a_forged_rotation_fails(
    rotated_january: tuple[LogDir, Path, Ed25519PrivateKey], tmp_path: Path
) -> None:
    """(b) An insider holding only a key of their own forges the rotation in the package (record signed by
    their key twice, the checkpoint over it re-signed) and re-signs the end checkpoint: exit 1 naming the
    rotation entry."""
    log, pkg, _ = rotated_january
    bad = copy(pkg, tmp_path)
    path = bad / "data" / "proof" / "signing-keys.json"
    doc = json.loads(path.read_text())
    entry = doc["rotations"][0]
    mine = Ed25519PrivateKey.generate()
    name = log.keys.key_name
    mine_vkey = checkpoint.format_vkey(name, mine.public_key())
    message = rotation.rotation_message(name, entry["seq"], entry["signing_key"]["old_vkey"], mine_vkey)
    sig = base64.b64encode(mine.sign(message)).decode("ascii")
    entry["signing_key"].update(new_vkey=mine_vkey, old_signature=sig, new_signature=sig)
    path.write_text(json.dumps(doc))
    end = bad / "data" / "proof" / "checkpoint-end.txt"
    text, _ = checkpoint.open_note(end.read_text())
    end.write_text(checkpoint.sign_note(text, name, mine))
    rebag(bad)
    code, out = verify_pkg(log, bad)
    assert code == 1 and "signing-keys.json entry 0" in out and "old (current) key" in out, out


def verify_pkg(log: LogDir, pkg: Path) -> tuple[int, str]:
    code, out, err = cli("verify-package", pkg, "--public-key", keyfile.public_path(log.key_file))
    return code, out + err


# -- witnesses -------------------------------------------------------------------------------------------


async def test_a_witness_follows_a_rotation_when_its_operator_adds_the_new_key(
    filled_log: LogDir, tmp_path: Path
) -> None:
    """The checkpoint over the rotation record is signed by both keys, so a witness that knows only the old
    key cosigns it; the new key's later checkpoints are refused until its operator adds the new vkey to the
    log's [[logs]] vkeys (docs/keys.md); with both keys listed it cosigns them, from the same state."""
    new = Ed25519PrivateKey.generate()
    config, key = make_witness(tmp_path, [filled_log])
    async with running(config) as url:
        await asyncio.to_thread(rotate, filled_log, new)
        w = witnessing(filled_log, url, key.verifier)
        assert (await sync(w)).startswith("cosigned")
        await asyncio.to_thread(append_with, filled_log, new, 3, 100)
        assert "refused" in await sync(w, force=True)
        w.store.close()
    new_vkey = checkpoint.format_vkey(filled_log.keys.key_name, new.public_key())
    entry = LogEntry(origin=filled_log.keys.key_name, vkeys=(filled_log.keys.vkey(), new_vkey))
    async with running(config.model_copy(update={"logs": (entry,)})) as url:
        w = witnessing(filled_log, url, key.verifier)
        assert (await sync(w)).startswith("cosigned")
        w.store.close()


async def sync(w: Witnessing, *, force: bool = False) -> str:
    async with aiohttp.ClientSession() as session:
        return (await w.sync_once(session, force=force))[w.targets[0].url]
