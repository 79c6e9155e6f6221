"""`verify`'s lean path for the common record (audit.quick_leaf, audit.QuickEvents) never accepts what the full
checks (`check_stored`, `check_plaintext`) refuse, and gives the same kind (issue 15: keyed verify speed).

The lean path only ever answers "accepted, with this kind" or "take the full checks"; a record it wrongly
accepted would be tampering `verify` no longer reports, so these properties are its whole contract.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import Check, LogIntegrityError
from bridge.events import Event, canonical_json
from bridge.log import audit, crypto, format
from bridge.log.schema import conversation_tag, dedup_tag
from tests.conftest import make_event

LOG_ID = bytes(range(16))
SECRETS = audit.Secrets(LOG_ID, b"i" * 32, {1: b"k" * 32, 2: b"K" * 32})
PREV = b"p" * 32

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_FIELDS = sorted(make_event(0).to_json())


@st.composite
def _payloads(draw: st.DrawFn) -> dict[str, Any]:
    """An event's encoding, then fields dropped or replaced (by other JSON, empty strings, known kinds...)."""
    d: dict[str, Any] = make_event(draw(st.integers(0, 9))).to_json()
    if draw(st.booleans()):
        d["attachments"] = [{"status": "stored", "blob_id": "b" * 64, "sha256": "0" * 64, "size": 1}]
    for name in draw(st.lists(st.sampled_from(_FIELDS), max_size=3)):
        if draw(st.booleans()):
            d.pop(name, None)
        else:
            d[name] = draw(_json | st.sampled_from(["", "message", "edit", "notice", "bogus", 1, [], {}]))
    return d


@given(
    payload=_payloads(),
    raw_payload=st.none() | st.binary(max_size=40),
    key_id=st.sampled_from([1, 2, 3]),
    seal_key=st.sampled_from([1, 2]),
    right_tag=st.booleans(),
    right_dedup=st.booleans(),
    dedup_type=st.sampled_from(["bytes", "str"]),
    flip_commit=st.booleans(),
    short=st.booleans(),
)
def test_the_lean_event_path_accepts_only_what_the_full_checks_accept(
    payload: dict[str, Any],
    raw_payload: bytes | None,
    key_id: int,
    seal_key: int,
    right_tag: bool,
    right_dedup: bool,
    dedup_type: str,
    flip_commit: bool,
    short: bool,
) -> None:
    body_bytes = raw_payload if raw_payload is not None else canonical_json(payload)
    source, conversation, event_id = (payload.get(k) for k in ("source", "conversation", "event_id"))
    keyed = all(isinstance(v, str) for v in (source, conversation, event_id))
    tag = conversation_tag(SECRETS.index_key, str(source), str(conversation)) if right_tag and keyed else b"t" * 16
    nonce = b"n" * 12
    salt = b"" if short else b"s" * 16
    header = format.RecordHeader(format.FORMAT_VERSION, format.RecordType.EVENT, 5, 0, key_id, tag, nonce, PREV)
    header_b = header.pack()
    plaintext = salt + body_bytes
    commit = format.commitment(plaintext)
    sealer = crypto.Sealer(SECRETS.data_keys[seal_key])
    body = sealer.seal(nonce, plaintext, format.associated_data(LOG_ID, header_b, commit))
    if flip_commit:
        commit = bytes([commit[0] ^ 1]) + commit[1:]
    dedup: Any = (
        dedup_tag(SECRETS.index_key, str(source), str(conversation), str(event_id))
        if right_dedup and keyed
        else b"d" * 16
    )
    if dedup_type == "str":
        dedup = dedup.hex()
    kind = audit.QuickEvents(SECRETS).kind(header_b, commit, body, dedup)
    try:  # what verify runs: the stored columns must be bytes, then the record's own checks
        (dedup,) = audit.blobs_of(5, dedup)
        full = audit.check_plaintext(5, SECRETS, header, header_b, commit, body, dedup)
    except LogIntegrityError:
        assert kind == ""  # refused by the full checks: never accepted here
        return
    if kind:
        assert isinstance(full, Event) and not full.attachments
        assert kind == audit.kind_of(full)


@given(
    seq=st.integers(0, 3),
    rtype=st.sampled_from(list(format.RecordType)),
    header_len=st.sampled_from([format.HEADER_BYTES, format.HEADER_BYTES - 1]),
    version=st.sampled_from([format.VERSION_PLAIN, format.VERSION_COMPRESSED, 3]),
    commit_len=st.sampled_from([32, 31]),
    right_leaf=st.booleans(),
    right_prev=st.booleans(),
    as_text=st.sampled_from([None, "header", "commit", "body", "leaf"]),
)
def test_the_lean_leaf_accepts_only_what_check_stored_accepts(
    seq: int,
    rtype: format.RecordType,
    header_len: int,
    version: int,
    commit_len: int,
    right_leaf: bool,
    right_prev: bool,
    as_text: str | None,
) -> None:
    prev = PREV if right_prev else b"q" * 32
    packed = format.RecordHeader(version, rtype, seq, 0, 1, b"t" * 16, b"n" * 12, PREV).pack()
    values: dict[str, Any] = {
        "header": packed[:header_len],
        "commit": b"c" * commit_len,
        "body": b"ciphertext",
    }
    leaf = format.leaf_of(values["header"], values["commit"], values["body"])
    values["leaf"] = leaf if right_leaf else b"l" * 32
    if as_text is not None:
        values[as_text] = values[as_text].hex()
    quick = audit.quick_leaf(2, values["header"], values["commit"], values["body"], values["leaf"], prev)
    try:
        stored = audit.blobs_of(2, values["header"], values["commit"], values["body"], values["leaf"])
        full = audit.check_stored(2, *stored, prev)
    except LogIntegrityError:
        assert quick == b""
        return
    if quick:
        assert full[0].type == format.RecordType.EVENT
        assert quick == full[1]


def test_the_lean_path_takes_the_common_event() -> None:
    """Not vacuous: a well-formed event without attachments is accepted with its kind, and its leaf too."""
    event = make_event(3)
    body_bytes = canonical_json(event.to_json())
    tag = conversation_tag(SECRETS.index_key, event.source, event.conversation)
    header_b, commit, body, leaf = format.seal_record(
        crypto.Sealer(SECRETS.data_keys[2]), format.ad_prefix(LOG_ID), format.RecordType.EVENT, 7, 0, 2, tag,
        b"n" * 12, PREV, b"s" * 16, body_bytes,
    )  # fmt: skip
    dedup = dedup_tag(SECRETS.index_key, *event.key)
    assert audit.quick_leaf(7, header_b, commit, body, leaf, PREV) == leaf
    assert audit.QuickEvents(SECRETS).kind(header_b, commit, body, dedup) == "message"
    assert orjson.loads(body_bytes)["kind"] == "message"


def _sealed(payload: dict[str, Any]) -> tuple[format.RecordHeader, bytes, bytes, bytes]:
    header = format.RecordHeader(format.FORMAT_VERSION, format.RecordType.EVENT, 5, 0, 1, b"t" * 16, b"n" * 12, PREV)
    header_b = header.pack()
    plaintext = b"s" * 16 + canonical_json(payload)
    commit = format.commitment(plaintext)
    body = crypto.Sealer(SECRETS.data_keys[1]).seal(
        b"n" * 12, plaintext, format.associated_data(LOG_ID, header_b, commit)
    )
    return header, header_b, commit, body


def test_an_authenticated_event_naming_its_room_by_a_number_is_named_not_a_crash() -> None:
    """A record sealed with the key whose event names source or room by a number: verify names the record
    (it crashed in the tag check before), and the lean path leaves it to the full checks."""
    payload: dict[str, Any] = make_event(1).to_json()
    payload["conversation"] = 7
    header, header_b, commit, body = _sealed(payload)
    assert audit.QuickEvents(SECRETS).kind(header_b, commit, body, b"d" * 16) == ""
    try:
        audit.check_plaintext(5, SECRETS, header, header_b, commit, body, b"d" * 16)
    except LogIntegrityError as exc:
        assert exc.seq == 5 and exc.check == Check.PAYLOAD
    else:
        raise AssertionError("accepted")


def test_an_authenticated_record_shorter_than_its_salt_is_named_not_a_crash() -> None:
    """A record sealed with the key whose plaintext is shorter than the salt: named (FormatError escaped)."""
    header = format.RecordHeader(format.FORMAT_VERSION, format.RecordType.EVENT, 5, 0, 1, b"t" * 16, b"n" * 12, PREV)
    header_b = header.pack()
    commit = format.commitment(b"short")
    body = crypto.Sealer(SECRETS.data_keys[1]).seal(
        b"n" * 12, b"short", format.associated_data(LOG_ID, header_b, commit)
    )
    try:
        audit.check_plaintext(5, SECRETS, header, header_b, commit, body, b"d" * 16)
    except LogIntegrityError as exc:
        assert exc.seq == 5
    else:
        raise AssertionError("accepted")
