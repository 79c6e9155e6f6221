"""Tests for bridge.log.checkpoint: signed notes, verifier keys and checkpoint bodies."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.log.checkpoint import (
    MAX_SIGNATURES,
    Checkpoint,
    CheckpointError,
    NoteSignature,
    Reason,
    format_vkey,
    key_id,
    open_note,
    parse_checkpoint_body,
    parse_checkpoint_note,
    parse_vkey,
    sign_checkpoint,
    sign_note,
    verify_checkpoint_note,
    verify_note,
)

# The worked example from golang.org/x/mod/sumdb/note's package documentation.
GO_SKEY_B64 = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = (
    GO_TEXT + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdng"
    "otpRZb6KE6RyyBwJnAM=\n"
)

NAME = "archief.example.nl/chatarchief/log"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
CP = Checkpoint(NAME, 1234, bytes(range(32)), 1767225600000)
# Pinned: the exact bytes we emit for CP signed by KEY (Ed25519 is deterministic).
CP_NOTE = (
    "archief.example.nl/chatarchief/log\n"
    "1234\n"
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
    "timestamp 1767225600000\n"
    "\n"
    "\u2014 archief.example.nl/chatarchief/log "
    "BVjjTzYSSUIp30fLStsP73IluW4u6rTr4w835o61LlN5LLdvD4Hr6dFJAtFkbBFmVVsrg6flhsE+8yJ8+gXWSfEVlws=\n"
)


def go_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(GO_SKEY_B64)[1:])


def signed_body(body: str, key: Ed25519PrivateKey = KEY, name: str = NAME) -> str:
    """A correctly signed note around an arbitrary (possibly bad) checkpoint body."""
    return sign_note(body, name, key)


def reason_of(call: object, *args: object, **kwargs: object) -> Reason:
    assert callable(call)
    with pytest.raises(CheckpointError) as info:
        call(*args, **kwargs)
    return info.value.reason


# --- the note format against the Go reference -----------------------------------------


def test_vkey_matches_go_sumdb_note_example() -> None:
    """format_vkey reproduces sumdb/note's example verifier key byte for byte."""
    assert format_vkey("PeterNeumann", go_key().public_key()) == GO_VKEY


def test_parse_vkey_reads_go_sumdb_note_example() -> None:
    """parse_vkey returns the name and the same public key as the example's signer."""
    name, public_key = parse_vkey(GO_VKEY + "\n")
    assert name == "PeterNeumann"
    assert key_id(name, public_key).hex() == "c74f20a3"
    assert public_key.public_bytes_raw() == go_key().public_key().public_bytes_raw()


def test_sign_note_matches_go_sumdb_note_example() -> None:
    """sign_note produces exactly the Go example's signed note (em dash, blank line, key ID)."""
    assert sign_note(GO_TEXT, "PeterNeumann", go_key()) == GO_NOTE


def test_verify_note_accepts_go_sumdb_note_example() -> None:
    """verify_note accepts the Go example and returns its text, including the final newline."""
    _, public_key = parse_vkey(GO_VKEY)
    assert verify_note(GO_NOTE, "PeterNeumann", public_key) == GO_TEXT
    assert verify_note(GO_NOTE.encode(), "PeterNeumann", public_key) == GO_TEXT


def test_parse_c2sp_tlog_checkpoint_example() -> None:
    """The C2SP tlog-checkpoint example parses: origin, size, root, one signature line."""
    note = (
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
        "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/"
        "Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    )
    cp, sigs = parse_checkpoint_note(note)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert cp.root == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.timestamp_ms is None
    assert [s.name for s in sigs] == ["example.com/behind-the-sofa"]
    assert len(sigs[0].key_id) == 4 and len(sigs[0].signature) == 64
    assert note.endswith(sigs[0].line + "\n")


# --- our checkpoint format ---------------------------------------------------------------


def test_checkpoint_note_format_is_pinned() -> None:
    """sign_checkpoint emits origin, size, base64 root, timestamp line, blank line, em-dash signature."""
    assert sign_checkpoint(CP, NAME, KEY) == CP_NOTE
    assert format_vkey(NAME, KEY.public_key()) == (
        "archief.example.nl/chatarchief/log+0558e34f+AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"
    )


def test_checkpoint_without_timestamp_has_three_lines() -> None:
    """Without a timestamp the body is exactly the three mandatory lines."""
    cp = Checkpoint(NAME, 0, bytes(32))
    assert cp.body() == f"{NAME}\n0\n{base64.b64encode(bytes(32)).decode()}\n"
    assert verify_checkpoint_note(sign_checkpoint(cp, NAME, KEY), NAME, KEY.public_key()) == cp


def test_signature_covers_body_through_final_newline() -> None:
    """The signature is over the body text up to and including its last newline, nothing more."""
    _, sigs = open_note(CP_NOTE)
    KEY.public_key().verify(sigs[0].signature, CP.body().encode())


origins = st.text(st.characters(codec="utf-8", min_codepoint=0x20), min_size=1, max_size=40)
checkpoints = st.builds(
    Checkpoint,
    origin=origins,
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    timestamp_ms=st.none() | st.integers(0, 2**63 - 1),
)


@given(checkpoints)
def test_sign_parse_verify_round_trip(cp: Checkpoint) -> None:
    """Any valid checkpoint survives sign -> parse -> verify unchanged."""
    note = sign_checkpoint(cp, NAME, KEY)
    parsed, sigs = parse_checkpoint_note(note)
    assert parsed == cp
    assert sigs == [NoteSignature(NAME, key_id(NAME, KEY.public_key()), sigs[0].signature)]
    assert verify_checkpoint_note(note, NAME, KEY.public_key()) == cp
    assert verify_checkpoint_note(note.encode(), NAME, KEY.public_key(), origin=cp.origin) == cp


@given(st.data())
@settings(max_examples=300)
def test_any_single_byte_altered_fails(data: st.DataObject) -> None:
    """Changing any one byte of a signed note makes verification raise CheckpointError."""
    raw = bytearray(CP_NOTE.encode())
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[at]))
    with pytest.raises(CheckpointError):
        verify_checkpoint_note(bytes(raw), NAME, KEY.public_key())


def test_every_truncation_fails() -> None:
    """Every proper prefix of a signed note is refused."""
    raw = CP_NOTE.encode()
    for end in range(len(raw)):
        with pytest.raises(CheckpointError):
            verify_checkpoint_note(raw[:end], NAME, KEY.public_key())


# --- keys: unknown, rotated, cosigners, bad ----------------------------------------------


def test_unknown_key_signatures_are_ignored() -> None:
    """A cosignature by another key does not disturb verification by either key."""
    cosigned = CP_NOTE + sign_note(CP.body(), "witness.example", OTHER).split("\n\n")[-1]
    assert verify_checkpoint_note(cosigned, NAME, KEY.public_key()) == CP
    assert verify_checkpoint_note(cosigned, "witness.example", OTHER.public_key()) == CP


def test_rotated_key_with_same_name_is_ignored_if_one_valid_signature_remains() -> None:
    """A signature under our name but another key ID (rotation) is skipped, not an error."""
    old = sign_note(CP.body(), NAME, OTHER).split("\n\n")[-1]
    assert verify_checkpoint_note(CP_NOTE + old, NAME, KEY.public_key()) == CP
    assert verify_checkpoint_note(CP_NOTE + old, NAME, OTHER.public_key()) == CP


def test_no_signature_by_the_given_key_is_unknown_key() -> None:
    """A note signed only by other keys is refused with UNKNOWN_KEY naming both keys."""
    with pytest.raises(CheckpointError) as info:
        verify_checkpoint_note(CP_NOTE, NAME, OTHER.public_key())
    assert info.value.reason is Reason.UNKNOWN_KEY
    assert key_id(NAME, OTHER.public_key()).hex() in str(info.value)
    assert reason_of(verify_checkpoint_note, CP_NOTE, "someone.else", KEY.public_key()) is Reason.UNKNOWN_KEY


def test_failing_signature_by_the_given_key_rejects_the_note() -> None:
    """A bad signature by the known key rejects the note even beside a good one."""
    _, sigs = open_note(CP_NOTE)
    bad = NoteSignature(NAME, sigs[0].key_id, bytes(64))
    assert reason_of(verify_checkpoint_note, CP_NOTE + bad.line + "\n", NAME, KEY.public_key()) is (
        Reason.BAD_SIGNATURE
    )
    short = NoteSignature(NAME, sigs[0].key_id, bytes(10))
    body_only = CP_NOTE.split("\u2014")[0]
    assert reason_of(verify_checkpoint_note, body_only + short.line + "\n", NAME, KEY.public_key()) is (
        Reason.BAD_SIGNATURE
    )


def test_signature_over_another_body_is_bad_signature() -> None:
    """A valid signature moved onto a different body fails as BAD_SIGNATURE."""
    other_body = Checkpoint(NAME, 1235, bytes(range(32)), 1767225600000).body()
    moved = other_body + "\n" + CP_NOTE.split("\n\n")[-1]
    assert reason_of(verify_checkpoint_note, moved, NAME, KEY.public_key()) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize(
    "vkey",
    [
        "",
        "PeterNeumann",
        "PeterNeumann+c74f20a3",
        "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # 7 hex digits
        "PeterNeumann+c74f20aZ+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # not hex
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong key ID
        "PeterNeuman+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # other name
        "PeterNeumann+c74f20a3+Alpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # algorithm 2
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10",  # 31-byte key
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW=",  # bad padding
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TX",  # non-canonical base64
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # space in name
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # empty name
    ],
)
def test_parse_vkey_rejects_malformed_keys(vkey: str) -> None:
    """Malformed verifier keys raise CheckpointError (a ValueError) with MALFORMED_KEY."""
    with pytest.raises(ValueError) as info:
        parse_vkey(vkey)
    assert isinstance(info.value, CheckpointError)
    assert info.value.reason is Reason.MALFORMED_KEY


@pytest.mark.parametrize("name", ["", "a b", "a+b", "tab\there", "nbsp\u00a0here"])
def test_invalid_key_names_are_refused(name: str) -> None:
    """Key names must be non-empty with no Unicode space or plus, for signing and vkeys."""
    assert reason_of(sign_note, "text\n", name, KEY) is Reason.BAD_KEY_NAME
    assert reason_of(format_vkey, name, KEY.public_key()) is Reason.BAD_KEY_NAME


# --- malformed notes ---------------------------------------------------------------------


def _lines(*body: str) -> str:
    return "\n".join(body) + "\n"


ROOT_B64 = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_lines(NAME, "05", ROOT_B64), Reason.BAD_SIZE),
        (_lines(NAME, "00", ROOT_B64), Reason.BAD_SIZE),
        (_lines(NAME, "+5", ROOT_B64), Reason.BAD_SIZE),
        (_lines(NAME, "-1", ROOT_B64), Reason.BAD_SIZE),
        (_lines(NAME, " 5", ROOT_B64), Reason.BAD_SIZE),
        (_lines(NAME, "5 ", ROOT_B64), Reason.BAD_SIZE),
        (_lines(NAME, "1_000", ROOT_B64), Reason.BAD_SIZE),
        (_lines(NAME, "\u0665", ROOT_B64), Reason.BAD_SIZE),  # Arabic-Indic five
        (_lines(NAME, "0x10", ROOT_B64), Reason.BAD_SIZE),
        (_lines(NAME, str(2**64), ROOT_B64), Reason.BAD_SIZE),
        (_lines(NAME, "5", base64.b64encode(bytes(31)).decode()), Reason.BAD_ROOT),
        (_lines(NAME, "5", base64.b64encode(bytes(33)).decode()), Reason.BAD_ROOT),
        (_lines(NAME, "5", ROOT_B64.rstrip("=")), Reason.BAD_ROOT),
        (_lines(NAME, "5", ROOT_B64[:-2] + "f="), Reason.BAD_ROOT),  # non-canonical last char
        (_lines(NAME, "5", base64.urlsafe_b64encode(b"\xff" * 32).decode()), Reason.BAD_ROOT),
        (_lines(NAME, "5", bytes(range(32)).hex()), Reason.BAD_ROOT),
        (_lines(NAME, "5", ROOT_B64, "timestamp 01"), Reason.BAD_TIMESTAMP),
        (_lines(NAME, "5", ROOT_B64, "timestamp -1"), Reason.BAD_TIMESTAMP),
        (_lines(NAME, "5", ROOT_B64, "timestamp "), Reason.BAD_TIMESTAMP),
        (_lines(NAME, "5", ROOT_B64, "timestamp  1"), Reason.BAD_TIMESTAMP),
        (_lines(NAME, "5", ROOT_B64, "witness x"), Reason.BAD_EXTENSION),
        (_lines(NAME, "5", ROOT_B64, "timestamp 1", "timestamp 2"), Reason.BAD_EXTENSION),
        (_lines(NAME, "5"), Reason.MALFORMED_CHECKPOINT),
        (_lines(NAME, "", "5", ROOT_B64), Reason.MALFORMED_CHECKPOINT),
        (_lines("", "5", ROOT_B64), Reason.MALFORMED_CHECKPOINT),
    ],
)
def test_signed_but_malformed_bodies_name_the_reason(body: str, reason: Reason) -> None:
    """A correctly signed note with a bad body is refused with a reason naming the bad line."""
    with pytest.raises(CheckpointError) as info:
        verify_checkpoint_note(signed_body(body), NAME, KEY.public_key())
    assert info.value.reason is reason
    assert info.value.evidence is not None


@pytest.mark.parametrize(
    "note",
    [
        CP_NOTE.replace("\n", "\r\n"),  # CRLF
        CP_NOTE.replace("1234", "12\t34"),  # control character
        CP_NOTE.replace("\n\n", "\n"),  # no blank line
        CP_NOTE[:-1],  # no final newline
        CP_NOTE + "\n",  # trailing blank line
        CP_NOTE.replace("\u2014 ", "- "),  # hyphen instead of em dash
        CP_NOTE.replace("\u2014 ", "\u2014"),  # no space after the dash
        CP_NOTE.replace("\u2014 ", "\u2013 "),  # en dash
        CP_NOTE.replace(f"\u2014 {NAME} ", f"\u2014 {NAME}  "),  # two spaces
        CP_NOTE.replace("=\n", "\n"),  # unpadded signature
        CP_NOTE + "\u2014 x AAAA\n",  # signature of 3 bytes, shorter than a key ID
        CP_NOTE + "\u2014  AAAAAAA=\n",  # empty key name
        CP_NOTE + "not a signature\n",
        "just text\n",
        "",
    ],
)
def test_malformed_notes_are_refused(note: str) -> None:
    """Notes that break signed-note framing are MALFORMED_NOTE, before any key is considered."""
    assert reason_of(verify_checkpoint_note, note, NAME, KEY.public_key()) is Reason.MALFORMED_NOTE
    assert reason_of(open_note, note) is Reason.MALFORMED_NOTE


def test_invalid_utf8_is_malformed() -> None:
    """Bytes that are not UTF-8 (or text with lone surrogates) are MALFORMED_NOTE."""
    raw = CP_NOTE.encode().replace("\u2014".encode(), b"\xe2\x80")
    assert reason_of(verify_checkpoint_note, raw, NAME, KEY.public_key()) is Reason.MALFORMED_NOTE
    assert reason_of(open_note, CP_NOTE.replace("1234", "12\ud800")) is Reason.MALFORMED_NOTE


def test_too_many_signatures_are_refused() -> None:
    """More than MAX_SIGNATURES signature lines are refused; exactly MAX_SIGNATURES is fine."""
    extra = "\u2014 cosigner AAAAAAA=\n"
    at_limit = CP_NOTE + extra * (MAX_SIGNATURES - 1)
    assert verify_checkpoint_note(at_limit, NAME, KEY.public_key()) == CP
    assert reason_of(open_note, at_limit + extra) is Reason.MALFORMED_NOTE


def test_body_may_not_look_like_signatures_to_a_later_blank_line() -> None:
    """The note text ends at the LAST blank line: signatures before it are part of the text."""
    note = CP_NOTE + "\n" + sign_note(CP_NOTE, "outer", OTHER).split("\n\n")[-1]
    assert verify_note(note, "outer", OTHER.public_key()) == CP_NOTE
    assert reason_of(verify_note, note, NAME, KEY.public_key()) is Reason.UNKNOWN_KEY


def test_expected_origin_mismatch_is_bad_origin() -> None:
    """With origin=..., a checkpoint from another log is refused even if the key matches."""
    with pytest.raises(CheckpointError) as info:
        verify_checkpoint_note(CP_NOTE, NAME, KEY.public_key(), origin="other.example/log")
    assert info.value.reason is Reason.BAD_ORIGIN
    assert "other.example/log" in str(info.value) and NAME in str(info.value)


def test_sign_note_refuses_text_it_could_not_frame() -> None:
    """Text without a final newline or with control characters cannot be signed."""
    for text in ("no newline", "tab\there\n", "cr\r\n", ""):
        assert reason_of(sign_note, text, NAME, KEY) is Reason.MALFORMED_NOTE


# --- the Checkpoint value ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"origin": ""}, Reason.BAD_ORIGIN),
        ({"origin": "two\nlines"}, Reason.BAD_ORIGIN),
        ({"origin": "nul\x00"}, Reason.BAD_ORIGIN),
        ({"origin": "surrogate\ud800"}, Reason.BAD_ORIGIN),
        ({"size": -1}, Reason.BAD_SIZE),
        ({"size": 2**64}, Reason.BAD_SIZE),
        ({"size": True}, Reason.BAD_SIZE),
        ({"size": 1.0}, Reason.BAD_SIZE),
        ({"root": bytes(31)}, Reason.BAD_ROOT),
        ({"root": "a" * 32}, Reason.BAD_ROOT),
        ({"timestamp_ms": -1}, Reason.BAD_TIMESTAMP),
        ({"timestamp_ms": 2**63}, Reason.BAD_TIMESTAMP),
    ],
)
def test_checkpoint_value_validates_on_construction(kwargs: dict[str, object], reason: Reason) -> None:
    """A Checkpoint that could not be written as a valid body cannot be constructed."""
    fields: dict[str, object] = {"origin": NAME, "size": 1, "root": bytes(32), "timestamp_ms": None}
    fields.update(kwargs)
    assert reason_of(Checkpoint, **fields) is reason


def test_checkpoint_is_frozen() -> None:
    """Checkpoint values are immutable."""
    with pytest.raises(AttributeError):
        CP.size = 5  # type: ignore[misc]


def test_parse_checkpoint_body_round_trips_body() -> None:
    """parse_checkpoint_body(cp.body()) == cp, with and without a timestamp."""
    assert parse_checkpoint_body(CP.body()) == CP
    plain = Checkpoint("o", 2**64 - 1, b"\xff" * 32)
    assert parse_checkpoint_body(plain.body()) == plain


def test_error_message_carries_evidence() -> None:
    """CheckpointError's message names the reason and quotes the offending text."""
    with pytest.raises(CheckpointError) as info:
        verify_checkpoint_note(signed_body(_lines(NAME, "007", ROOT_B64)), NAME, KEY.public_key())
    assert info.value.evidence == "007"
    assert str(info.value) == "tree size is not canonical decimal: '007'"
