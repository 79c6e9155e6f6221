"""Checking one stored record against everything it claims (pure: bytes in, values out).

Shared by the offline verifier (`verify.py`, every record of the log) and the
writer (`store.py`, every record after the last signed checkpoint before it
signs anything), so the two can never disagree on what an authentic record is.

`check_stored` needs no key: the header parses and names its own position, the
commitment has the right size, the leaf recomputed from the stored bytes equals
the stored leaf column, and the header links to the previous leaf. `open_clear_record`
(no key) reads a KEY or BLOB record. `check_plaintext` (with the keys) decrypts
an EVENT or DECISION record, checks the AEAD tag, the commitment, that the
payload parses and that the record sits under the conversation and dedup tags
its payload claims; for clear records it checks their dedup entry.

Every failure raises `LogIntegrityError` naming the record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from hmac import compare_digest
from typing import Any

import orjson

from bridge.errors import Check, LogIntegrityError
from bridge.events import ENCODING_VERSION, EncodingError, Event, Kind, event_from_bytes
from bridge.log import crypto, format, rotation
from bridge.log.clear import BLOB_SOURCE, BlobRecord, ClearRecordError, KeyRecord, parse_blob, parse_key
from bridge.log.decision import DECISION_SOURCE, Decision, DecisionError, parse_decision
from bridge.log.rotation import SigningKeyRecord
from bridge.log.schema import conversation_tag, dedup_tag, key_dedup


@dataclass(frozen=True)
class Secrets:
    """What decrypting records needs: the log id, the index key and every data key."""

    log_id: bytes
    index_key: bytes
    data_keys: dict[int, bytes]
    #: One AES-GCM context per data key, built once (not per record).
    sealers: dict[int, crypto.Sealer] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sealers", crypto.sealers(self.data_keys))

    def __repr__(self) -> str:
        return f"Secrets(log_id={self.log_id.hex()}, keys=<hidden>)"


Opened = Event | Decision | KeyRecord | BlobRecord | SigningKeyRecord


def blobs_of(seq: int, *values: object) -> tuple[bytes, ...]:
    """The stored columns of a record as bytes; a value of another SQL type (a damaged or edited row) is
    tampering naming the record, not a crash."""
    out = []
    for v in values:
        if not isinstance(v, bytes | memoryview):
            raise LogIntegrityError(
                seq, "a stored column holds another type than bytes", "bytes", type(v).__name__, check=Check.DATABASE
            )
        out.append(bytes(v))
    return tuple(out)


def check_position(expected: int, found: int) -> None:
    """The next stored record must be the one expected: a gap in the sequence is a missing record."""
    if found != expected:
        raise LogIntegrityError(
            expected,
            f"record is missing (the next stored record is {found})",
            expected,
            found,
            check=Check.MISSING_RECORD,
        )


def check_stored(
    seq: int, header_b: bytes, commit: bytes, body: bytes, stored_leaf: bytes, prev: bytes | None
) -> tuple[format.RecordHeader, bytes]:
    """The parsed header and the leaf recomputed from the stored bytes; `prev` None skips the chain check."""
    try:
        header = format.unpack_header(header_b)
    except format.FormatError as exc:
        raise LogIntegrityError(seq, f"header does not parse: {exc}", check=Check.HEADER) from None
    if header.seq != seq:
        raise LogIntegrityError(seq, "record is out of place (swapped or moved)", seq, header.seq, check=Check.POSITION)
    if len(commit) != format.HASH_BYTES:
        raise LogIntegrityError(
            seq, "commitment has the wrong length", format.HASH_BYTES, len(commit), check=Check.COMMITMENT
        )
    leaf = format.leaf_of(header_b, commit, body)
    if not crypto.hmac_equal(leaf, stored_leaf):
        raise LogIntegrityError(
            seq, "stored bytes do not match the record's leaf hash", stored_leaf, leaf, check=Check.LEAF
        )
    if prev is not None and not crypto.hmac_equal(header.prev_leaf, prev):
        where = seq - 1 if seq > 0 else seq
        raise LogIntegrityError(
            where,
            f"hash chain broken: record {seq} committed to a different record {where}",
            header.prev_leaf,
            prev,
            check=Check.CHAIN,
        )
    return header, leaf


def open_clear_record(
    seq: int, header: format.RecordHeader, commit: bytes, body: bytes
) -> KeyRecord | BlobRecord | SigningKeyRecord:
    """The payload of a KEY, BLOB or SIGNING_KEY record, checked against its commitment (no key needed)."""
    if header.type == format.RecordType.SIGNING_KEY:
        return rotation.open_record(seq, header, commit, body)
    try:
        _, payload = format.open_clear(header, commit, body)
        if header.type == format.RecordType.KEY:
            key = parse_key(payload)
            if key.key_id != header.key_id:
                raise ClearRecordError(f"key record names key {key.key_id} but its header key {header.key_id}")
            return key
        return parse_blob(payload)
    except (format.RecordAuthError, ClearRecordError) as exc:
        check = Check.COMMITMENT if isinstance(exc, format.CommitmentMismatch) else Check.CLEAR_RECORD
        raise LogIntegrityError(seq, f"{header.type.name.lower()} record: {exc}", check=check) from None


def check_plaintext(
    seq: int,
    secrets: Secrets,
    header: format.RecordHeader,
    header_b: bytes,
    commit: bytes,
    body: bytes,
    dedup: bytes,
) -> Opened:
    """Decrypt and check a record against its tags (see the module docstring); returns what it holds."""
    if header.type in format.CLEAR_TYPES:
        clear = open_clear_record(seq, header, commit, body)
        if isinstance(clear, KeyRecord):
            expected = key_dedup(clear.key_id)
        elif isinstance(clear, SigningKeyRecord):
            expected = rotation.dedup_of(clear.new_vkey)
        else:
            expected = dedup_tag(secrets.index_key, BLOB_SOURCE, "", clear.blob_id)
        if not crypto.hmac_equal(dedup, expected):
            raise LogIntegrityError(
                seq, "dedup index entry does not belong to this record", expected, dedup, check=Check.TAGS
            )
        return clear
    try:
        payload = format.open_record(secrets.log_id, secrets.sealers, header, header_b, commit, body)
    except format.RecordAuthError as exc:
        raise LogIntegrityError(seq, str(exc), check=auth_check(exc)) from None
    if header.type == format.RecordType.DECISION:
        return _check_decision(seq, secrets, header, payload, dedup)
    try:
        event = event_from_bytes(payload)
    except EncodingError as exc:
        raise LogIntegrityError(seq, f"decrypted payload is not an event: {exc}", check=Check.PAYLOAD) from None
    _check_tags(seq, secrets, header, dedup, (event.source, event.conversation, event.event_id), "event")
    return event


def _check_tags(
    seq: int, secrets: Secrets, header: format.RecordHeader, dedup: bytes, key: tuple[str, str, str], what: str
) -> None:
    """A record sits under the conversation tag and the dedup entry of its (source, conversation, id)."""
    source, conversation, record_id = key
    if not all(type(part) is str for part in key):  # authenticated, yet no writer of ours wrote it
        raise LogIntegrityError(seq, f"{what} names its conversation with other values than text", check=Check.PAYLOAD)
    tag = conversation_tag(secrets.index_key, source, conversation)
    if not crypto.hmac_equal(tag, header.conversation_tag):
        raise LogIntegrityError(
            seq,
            f"{what} is filed under another conversation than its header says",
            tag,
            header.conversation_tag,
            check=Check.TAGS,
        )
    want = dedup_tag(secrets.index_key, source, conversation, record_id)
    if not crypto.hmac_equal(dedup, want):
        raise LogIntegrityError(seq, f"dedup index entry does not belong to this {what}", want, dedup, check=Check.TAGS)


def _check_decision(seq: int, secrets: Secrets, header: format.RecordHeader, payload: bytes, dedup: bytes) -> Decision:
    """A decision record must parse and sit under the conversation and dedup tags its payload claims."""
    try:
        d = parse_decision(payload)
    except DecisionError as exc:
        raise LogIntegrityError(seq, f"decrypted payload is not a decision: {exc}", check=Check.PAYLOAD) from None
    _check_tags(seq, secrets, header, dedup, (DECISION_SOURCE, d.target.conversation, d.id), "decision")
    return d


# -- the lean path: the common record checked with fewer objects (same verdict, never a different one) -----

_EVENT = format.RecordType.EVENT
_PLAIN = format.VERSION_PLAIN
_COMPRESSED = format.VERSION_COMPRESSED
_HEADER_BYTES = format.HEADER_BYTES
_NONCE = slice(format.NONCE_OFFSET, format.NONCE_OFFSET + crypto.NONCE_BYTES)
_PREV = slice(format.HEADER_BYTES - format.HASH_BYTES, format.HEADER_BYTES)
_TAG = slice(format.NONCE_OFFSET - format.TAG_BYTES, format.NONCE_OFFSET)
_SALT = crypto.SALT_BYTES
_DEDUP_BYTES = 16  # crypto.keyed_tag's default length, which dedup_tag uses
_KINDS = frozenset(k.value for k in Kind)
#: The keys `Event.from_json` reads (it ignores others).
_EVENT_KEYS = frozenset(
    ("v", "source", "conversation", "event_id", "kind", "sender", "sent_at", "received_at", "content",
     "relates_to", "attachments", "raw", "problem")
)  # fmt: skip


def quick_leaf(seq: int, header_b: object, commit: object, body: object, stored_leaf: object, prev: bytes) -> bytes:
    """The leaf of an EVENT record that passes every check of `check_stored` (with the chain from `prev`),
    else b"": the caller then runs `blobs_of` and `check_stored`, which name what is wrong. The same checks
    on the packed bytes, without building a `RecordHeader`."""
    if (
        type(header_b) is bytes
        and type(commit) is bytes
        and type(body) is bytes
        and type(stored_leaf) is bytes
        and len(header_b) == _HEADER_BYTES
        and (header_b[0] == _COMPRESSED or header_b[0] == _PLAIN)
        and header_b[1] == _EVENT
        and int.from_bytes(header_b[2:10], "big") == seq
        and len(commit) == format.HASH_BYTES
    ):
        leaf = hashlib.sha256(b"\x00" + header_b + commit + hashlib.sha256(body).digest()).digest()
        if compare_digest(leaf, stored_leaf) and compare_digest(header_b[_PREV], prev):
            return leaf
    return b""


class QuickEvents:
    """`check_plaintext` for the common EVENT record (no attachments), with the per-log work done once: the
    AES-GCM context per data key, the associated data's prefix, each conversation's tag.

    `kind(header_b, commit, body, dedup)` is the event's kind (what `kind_of` gives) when the record passes
    every check `check_plaintext` makes, else "": the caller then runs `check_plaintext`, which names what is
    wrong (or returns the event when it is only one this path does not take, such as one with attachments).
    """

    __slots__ = ("_conversations", "_index_key", "_prefix", "_sealers")

    def __init__(self, secrets: Secrets) -> None:
        self._sealers = secrets.sealers
        self._prefix = format.ad_prefix(secrets.log_id)
        self._index_key = secrets.index_key
        self._conversations: dict[tuple[str, str], tuple[bytes, Any]] = {}

    def kind(self, header_b: bytes, commit: bytes, body: bytes, dedup: object) -> str:
        sealer = self._sealers.get(int.from_bytes(header_b[18:22], "big"))
        if sealer is None or type(dedup) is not bytes:
            return ""
        try:
            plaintext = sealer.open(header_b[_NONCE], body, self._prefix + header_b + commit)
        except crypto.AuthError:
            return ""
        if header_b[0] == _COMPRESSED:
            try:
                plaintext = format.expand(plaintext)
            except format.RecordAuthError:
                return ""
        elif header_b[0] != _PLAIN:
            return ""
        if len(plaintext) < _SALT or not compare_digest(hashlib.sha256(plaintext).digest(), commit):
            return ""
        try:
            d = orjson.loads(plaintext[_SALT:])
        except orjson.JSONDecodeError:
            return ""
        # Exactly when `Event.from_json` accepts it with no attachments (a property test pins this).
        if type(d) is not dict or d.get("v") != ENCODING_VERSION or not d.keys() >= _EVENT_KEYS:
            return ""
        source, conversation, event_id, kind = d["source"], d["conversation"], d["event_id"], d["kind"]
        if (
            d["attachments"] != []
            or type(kind) is not str
            or kind not in _KINDS
            or type(source) is not str
            or type(conversation) is not str
            or type(event_id) is not str
            or not (source and conversation and event_id)
        ):
            return ""
        known = self._conversations.get((source, conversation))
        if known is None:
            known = self._conversations[(source, conversation)] = self._conversation(source, conversation)
        tag, event_mac = known
        if not compare_digest(tag, header_b[_TAG]):
            return ""
        mac = event_mac.copy()  # `dedup_tag`'s keyed BLAKE2b, its conversation's prefix already absorbed
        mac.update(event_id.encode("utf-8", "surrogatepass"))
        if not compare_digest(dedup, mac.digest()):
            return ""
        return kind

    def _conversation(self, source: str, conversation: str) -> tuple[bytes, Any]:
        """A conversation's tag, and the state of `dedup_tag`'s MAC after its parts before the event id (the
        same bytes `crypto.keyed_tag` joins: a pinned test compares the two)."""
        mac = hashlib.blake2b(key=self._index_key, digest_size=_DEDUP_BYTES)
        mac.update("\x00".join(("event", source, conversation, "")).encode("utf-8", "surrogatepass"))
        return conversation_tag(self._index_key, source, conversation), mac


def auth_check(exc: format.RecordAuthError) -> Check:
    """A commitment mismatch is named apart from a record that does not open (AEAD tag, key, form)."""
    if isinstance(exc, format.PayloadFormError):
        return Check.PAYLOAD
    return Check.COMMITMENT if isinstance(exc, format.CommitmentMismatch) else Check.AEAD


def kind_of(opened: Opened) -> str:
    """The name `verify` counts a record under."""
    if isinstance(opened, Event):
        return opened.kind.value
    if isinstance(opened, Decision):
        return "decision"
    if isinstance(opened, SigningKeyRecord):
        return "signing-key"
    return "key" if isinstance(opened, KeyRecord) else "blob"
