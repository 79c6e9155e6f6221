"""Tests for bridge.witness.note and bridge.witness.request: the C2SP formats, byte for byte.

Fixtures in tests/fixtures/c2sp/ are the specifications' own examples (see its README for the source commit).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.log import keys as keyfile
from bridge.witness.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    BadSignature,
    CosignerKey,
    LogCheckpoint,
    NoteError,
    NoteSignature,
    Verifier,
    cosignature_message,
    format_note,
    parse_checkpoint,
    parse_signature_lines,
    parse_vkey,
    split_note,
    verified_signatures,
)
from bridge.witness.request import AddCheckpoint, RequestError, parse_add_checkpoint
from tests.conftest import LogDir

C2SP = Path(__file__).parent / "fixtures" / "c2sp"


def fixture(name: str) -> str:
    return (C2SP / name).read_text("utf-8")


# -- the specifications' examples --------------------------------------------------------------------------


def test_signed_note_example_verifies() -> None:
    """signed-note.md's example vkey verifies its example note with our code."""
    verifier = parse_vkey(fixture("signed-note-example.vkey"))
    assert (verifier.name, verifier.alg, verifier.key_id.hex()) == ("example.com/foo", ALG_ED25519, "530d903a")
    text, sigs = split_note(fixture("signed-note-example.note"))
    assert text == "This is an example message.\n"
    assert [v.name for v, _ in verified_signatures(text, sigs, [verifier])] == ["example.com/foo"]


def test_signed_note_example_altered_is_refused() -> None:
    """One changed character in the spec's note makes the known key's signature fail: the note is invalid."""
    verifier = parse_vkey(fixture("signed-note-example.vkey"))
    text, sigs = split_note(fixture("signed-note-example.note").replace("example message", "example massage"))
    with pytest.raises(BadSignature):
        verified_signatures(text, sigs, [verifier])


def test_cosignature_example_shape_and_timestamp() -> None:
    """tlog-cosignature.md's example cosignature is key ID || u64 timestamp || 64-byte signature, and its
    timestamp is the one the spec's signed-message example shows (1679315147)."""
    text, sigs = split_note(fixture("tlog-cosignature-example.note"))
    cp = parse_checkpoint(text)
    assert (cp.origin, cp.size) == ("example.com/behind-the-sofa", 20852163)
    cosig = next(s for s in sigs if s.name == "witness.example.com/w1")
    assert len(cosig.signature) == 8 + 64
    (ts,) = struct.unpack(">Q", cosig.signature[:8])
    assert ts == 1679315147
    assert cosignature_message(text, ts).decode() == fixture("tlog-cosignature-message.txt")


def test_cosignature_example_ignored_without_its_key() -> None:
    """A verifier that does not know the example witness ignores its line (and finds no known signature)."""
    text, sigs = split_note(fixture("tlog-cosignature-example.note"))
    ours = CosignerKey.generate("witness.example.com/w1").verifier  # same name, another key: another key ID
    assert verified_signatures(text, sigs, [ours]) == []


def test_witness_example_request_parses() -> None:
    """tlog-witness.md's example add-checkpoint body parses: old size, four proof hashes, a two-signature note."""
    req = parse_add_checkpoint(fixture("tlog-witness-request.txt").encode())
    assert req.old_size == 20852014
    assert len(req.proof) == 4 and all(len(h) == 32 for h in req.proof)
    text, sigs = split_note(req.note)
    assert parse_checkpoint(text).size == 20852163
    assert len(sigs) == 2
    assert req.encode() == fixture("tlog-witness-request.txt").encode()


def test_witness_example_response_parses() -> None:
    """The spec's example response is three signature lines from two witnesses."""
    sigs = parse_signature_lines(fixture("tlog-witness-response.txt"))
    assert [s.name for s in sigs] == ["witness.example/w1", "witness.example/w1", "witness.example/w2"]


# -- an independent checker, written from tlog-cosignature.md and signed-note.md only -----------------------


def independent_cosignature_check(vkey: str, note: str) -> int:
    """Returns the timestamp of the valid cosignature by `vkey` in `note`; raises AssertionError otherwise.

    Written from the spec text alone: vkey = name+hex(id)+base64(0x04||pub); id = SHA-256(name||"\\n"||0x04||pub)[:4];
    the signature = id || u64be timestamp || Ed25519 over "cosignature/v1\\ntime <ts>\\n" || note text.
    """
    name, id_hex, blob64 = vkey.split("+", 2)
    blob = base64.b64decode(blob64)
    assert blob[0] == 0x04 and len(blob) == 33
    pub = blob[1:]
    kid = hashlib.sha256(name.encode() + b"\n" + b"\x04" + pub).digest()[:4]
    assert kid.hex() == id_hex
    cut = note.rindex("\n\n")
    text, lines = note[: cut + 1], note[cut + 2 :].splitlines()
    for line in lines:
        dash, key_name, sig64 = line.split(" ")
        assert dash == "\u2014"
        raw = base64.b64decode(sig64)
        if key_name != name or raw[:4] != kid:
            continue
        ts = int.from_bytes(raw[4:12], "big")
        message = b"cosignature/v1\ntime " + str(ts).encode() + b"\n" + text.encode()
        Ed25519PublicKey.from_public_bytes(pub).verify(raw[12:], message)  # raises if invalid
        return ts
    raise AssertionError("no cosignature by that key")


def independent_note_check(vkey: str, note: str) -> str:
    """Returns the text of `note` once the Ed25519 note signature (type 0x01) by `vkey` verifies.

    Written from signed-note.md alone: id = SHA-256(name||"\n"||0x01||pub)[:4]; the signature is over the text,
    which is everything before the last blank line, including its final newline.
    """
    name, id_hex, blob64 = vkey.split("+", 2)
    blob = base64.b64decode(blob64)
    assert blob[0] == 0x01 and len(blob) == 33
    pub = blob[1:]
    kid = hashlib.sha256(name.encode() + b"\n\x01" + pub).digest()[:4]
    assert kid.hex() == id_hex
    cut = note.rindex("\n\n")
    text = note[: cut + 1]
    for line in note[cut + 2 :].splitlines():
        dash, key_name, sig64 = line.split(" ")
        raw = base64.b64decode(sig64)
        if dash == "\u2014" and key_name == name and raw[:4] == kid:
            Ed25519PublicKey.from_public_bytes(pub).verify(raw[4:], text.encode())
            return text
    raise AssertionError("no signature by that key")


def test_our_log_checkpoints_pass_an_independent_check(filled_log: LogDir) -> None:
    """Every checkpoint a real log signed verifies with a signed-note checker that does not import our code,
    against the vkey in KEY.pub, and is a tlog-checkpoint (origin = key name, decimal size, base64 root)."""
    import sqlite3

    vkey = keyfile.public_path(filled_log.key_file).read_text().strip()
    conn = sqlite3.connect(filled_log.db)
    notes = [str(r[0]) for r in conn.execute("SELECT note FROM checkpoints")]
    conn.close()
    assert len(notes) > 3
    for note in notes:
        origin, size, root, *_ = independent_note_check(vkey, note).split("\n")
        assert origin == vkey.split("+")[0] and size.isdigit() and len(base64.b64decode(root)) == 32


def test_our_cosignature_passes_an_independent_check() -> None:
    """A cosignature our witness key makes verifies with a checker that does not import our code."""
    key = CosignerKey.generate("witness.example.nl/w1")
    text = LogCheckpoint("chatarchief.invalid/log/00ff", 7, bytes(range(32)), ("timestamp 1700000000000",)).text()
    note = format_note(text, [key.cosign(text, 1700000123)])
    assert independent_cosignature_check(key.verifier.vkey, note) == 1700000123
    with pytest.raises(Exception):  # noqa: B017 - any failure of the independent checker
        independent_cosignature_check(key.verifier.vkey, note.replace("\n7\n", "\n8\n"))


# -- keys --------------------------------------------------------------------------------------------------


def test_witness_key_roundtrip_and_vkey() -> None:
    """The private key file form reads back to the same key; its vkey is type 0x04 with the spec's key ID."""
    key = CosignerKey.generate("witness.example.nl/w1")
    again = CosignerKey.from_text(key.to_text())
    assert again.verifier == key.verifier
    v = parse_vkey(key.verifier.vkey)
    assert v.alg == ALG_COSIGNATURE_V1
    pub = key.private.public_key().public_bytes_raw()
    assert v.key_id == hashlib.sha256(b"witness.example.nl/w1\n\x04" + pub).digest()[:4]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "name+530d903a",
        "na me+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "example.com/foo+530d903a+AkyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "example.com/foo+530d903a+BekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
    ],
)
def test_bad_vkeys_are_refused(text: str) -> None:
    """Missing parts, a spaced name, a wrong key ID, bad base64, an unknown type: each a NoteError."""
    with pytest.raises(NoteError):
        parse_vkey(text)


def test_cosignature_key_does_not_verify_as_note_key() -> None:
    """The same Ed25519 key as a 0x01 note key has another key ID: a cosignature is not a log signature."""
    key = CosignerKey.generate("w.example/x")
    as_note_key = Verifier("w.example/x", ALG_ED25519, key.verifier.public)
    assert as_note_key.key_id != key.verifier.key_id
    text = LogCheckpoint("o", 1, bytes(32)).text()
    assert verified_signatures(text, [key.cosign(text, 5)], [as_note_key]) == []


# -- request bodies ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"old 01\n\nx\n",
        b"old -1\n\nx\n",
        b"new 1\n\nx\n",
        b"old 1\nnot base64!\n\nx\n",
        b"old 1\n" + base64.b64encode(bytes(31)) + b"\n\nx\n",
        b"old 1\n" + b"\n".join([base64.b64encode(bytes(32))] * 64) + b"\n\nx\n",
        b"old 1\nx\n",
        b"\xff\n\n",
    ],
)
def test_bad_request_bodies(body: bytes) -> None:
    """Leading zeros, a bad first line, a non-hash proof line, 64 proof lines, no blank line, not UTF-8: 400."""
    with pytest.raises(RequestError):
        parse_add_checkpoint(body)


# -- properties --------------------------------------------------------------------------------------------

names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E).filter(lambda c: c != "+"), min_size=1)
lines = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF), min_size=1).filter(lambda s: s.strip() == s)


@settings(max_examples=150)
@given(
    origin=lines,
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    ext=st.lists(lines, max_size=3),
)
def test_checkpoint_text_roundtrip(origin: str, size: int, root: bytes, ext: list[str]) -> None:
    """Any checkpoint (with opaque extension lines) serialises and parses back to itself."""
    cp = LogCheckpoint(origin, size, root, tuple(ext))
    assert parse_checkpoint(cp.text()) == cp


@settings(max_examples=100)
@given(
    text_lines=st.lists(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF)), min_size=1, max_size=5),
    sigs=st.lists(
        st.tuples(names, st.binary(min_size=4, max_size=4), st.binary(min_size=1, max_size=80)), min_size=1, max_size=17
    ),
)
def test_note_roundtrip(text_lines: list[str], sigs: list[tuple[str, bytes, bytes]]) -> None:
    """Text (which may hold empty lines) plus up to 17 signatures splits back into the same text and lines."""
    text = "\n".join(text_lines) + "\n"
    signatures = [NoteSignature(n, k, s) for n, k, s in sigs]
    got_text, got = split_note(format_note(text, signatures))
    assert got_text == text and got == signatures


@settings(max_examples=50, deadline=None)
@given(origin=lines, size=st.integers(0, 2**40), ts=st.integers(0, 2**63 - 1))
def test_cosign_verify_roundtrip(origin: str, size: int, ts: int) -> None:
    """A cosignature verifies for the text it was made over and for no other size."""
    key = CosignerKey.from_text(CosignerKey.generate("w.example/p").to_text())
    text = LogCheckpoint(origin, size, bytes(32)).text()
    sig = key.cosign(text, ts)
    assert key.verifier.timestamp(sig) == ts
    assert key.verifier.verify(text, sig)
    assert not key.verifier.verify(LogCheckpoint(origin, size + 1, bytes(32)).text(), sig)


@settings(max_examples=100)
@given(
    old=st.integers(0, 2**64 - 1),
    proof=st.lists(st.binary(min_size=32, max_size=32), max_size=63),
    note=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF)),
)
def test_request_roundtrip(old: int, proof: list[bytes], note: str) -> None:
    """Any add-checkpoint body encodes and parses back to itself."""
    req = AddCheckpoint(old, tuple(proof), note)
    assert parse_add_checkpoint(req.encode()) == req


def test_ed25519_key_is_not_reused_for_a_log_key() -> None:
    """Sanity: a fresh private key gives a vkey the parser accepts and compares equal."""
    priv = Ed25519PrivateKey.generate()
    v = Verifier("log.example/1", ALG_ED25519, priv.public_key().public_bytes_raw())
    assert parse_vkey(v.vkey) == v


# -- another implementation's values (transparency-dev/formats, note/note_cosigv1_test.go) ---------------------
# Constants from its tests (TestCoSigV1NewVerifier, TestCosignatureTimestamp): a deployed witness's cosignature
# vkey, an Ed25519 note vkey, and a cosignature whose timestamp it decodes as 1727964367.

REMORA_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
TEST_NOTE_VKEY = "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"
GO_COSIG = "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA=="
GO_NOTE_SIG = "eQjRQm6eSKzFoiYalgwCPXu2y3ijtg68is9M46JKxuZB+dRfTmeQeDBoXnvxZx2ugnkyV+MUMLXpWs1hPb/W/4xkNQY="


def test_another_implementations_vkeys_parse_with_the_same_key_ids() -> None:
    """Go's vkeys (a real witness's 0x04 key, a 0x01 key whose base64 holds '+') parse, and our key ID
    computation gives the IDs that implementation wrote into them."""
    remora = parse_vkey(REMORA_VKEY)
    assert (remora.name, remora.alg, remora.key_id.hex()) == ("remora.n621.de", ALG_COSIGNATURE_V1, "da77ade7")
    assert remora.vkey == REMORA_VKEY
    test = parse_vkey(TEST_NOTE_VKEY)
    assert (test.alg, test.key_id.hex()) == (ALG_ED25519, "7997405c") and test.vkey == TEST_NOTE_VKEY


def test_another_implementations_cosignature_timestamp() -> None:
    """Our reading of a cosignature's timestamp agrees with Go's on its test value; a plain Ed25519 note
    signature (no timestamp) is not taken for a cosignature."""
    raw = base64.b64decode(GO_COSIG)
    sig = NoteSignature("w", raw[:4], raw[4:])
    key = Verifier("w", ALG_COSIGNATURE_V1, bytes(32))
    assert key.timestamp(sig) == 1727964367
    plain = base64.b64decode(GO_NOTE_SIG)
    assert key.timestamp(NoteSignature("w", plain[:4], plain[4:])) is None
