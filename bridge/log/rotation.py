"""Signing-key rotation: the SIGNING_KEY record and the chain of keys it builds (pure: values in, values out).

A log's checkpoints are signed by one Ed25519 key at a time. The first is the
key `init` made (`meta.vkey`, `KEY.pub`: what auditors pin). A rotation appends
one clear record, type SIGNING_KEY, under the Merkle proof like a KEY record:

    {"v": 1, "created_ms": n, "new_vkey": "<vkey>", "new_signature": b64, "old_vkey": "<vkey>",
     "old_signature": b64, "seq": n}

Both signatures are Ed25519 over `rotation_message` (a domain-separated text
naming the log, the record's own position `seq` = the tree size before it, the
old and the new verifier key): the old key hands over, the new key accepts. The
writer then signs a checkpoint over the record (tree size seq + 1) with BOTH
keys (one signed note, two signature lines), after which it signs with the new
key only.

The rule every verifier applies (`KeyChain`): starting from the pinned key,
each rotation record, checked in log order, must be signed by the key current
before it and by the key it names; a checkpoint at tree size S must verify
under the key current after every rotation record at a position below S. One
exception: a prefix sealed after a rotation (a month-end checkpoint signed days
later) is signed by the key current when it is signed, so a checkpoint at S may
instead be signed by a key rotated in at a record at or after S, if its signed
timestamp is not before that rotation record's. So a checkpoint signed by a key
not yet rotated in (at its time), a checkpoint signed by a retired key after its
rotation, and a rotation record not signed by the current key all fail, each
naming the record or checkpoint.

What this cannot stop: whoever still holds a retired key can sign a different
history up to its rotation (a fork). Witnesses refuse such a fork; destroy the
retired key after rotating (docs/keys.md).

Dedup identity of the record (unkeyed, like KEY records): `b"vkey\\x00" ||
SHA-256(new vkey)[:16]`, so the store finds the rotation records through the
dedup index (`ROTATION_ROWS_SQL`) without reading every record.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bridge.errors import Check, DataError, LogIntegrityError
from bridge.events import canonical_json
from bridge.log import checkpoint, format
from bridge.log.clear import json_object

ROTATION_VERSION = 1
DEDUP_PREFIX = b"vkey\x00"
#: The records that may be rotation records, found through the dedup index; callers keep only type SIGNING_KEY.
ROTATION_ROWS_SQL = (
    "SELECT seq, header, commitment, body FROM records WHERE dedup >= x'766b657900' AND dedup < x'766b657901'"
    " ORDER BY seq"
)
_DOMAIN = "chatarchief signing-key rotation v1"
_FIELDS = {"v", "created_ms", "seq", "old_vkey", "new_vkey", "old_signature", "new_signature"}

Key = tuple[str, Ed25519PublicKey]


class RotationError(DataError, ValueError):
    """A SIGNING_KEY payload that does not parse or does not verify; the message says why."""


def rotation_message(origin: str, seq: int, old_vkey: str, new_vkey: str) -> bytes:
    """What both keys sign: the log (its origin names the log id), the record's position, both keys."""
    return f"{_DOMAIN}\nlog {origin}\nseq {seq}\nold {old_vkey}\nnew {new_vkey}\n".encode()


def dedup_of(new_vkey: str) -> bytes:
    return DEDUP_PREFIX + hashlib.sha256(new_vkey.encode("ascii")).digest()[:16]


def vkey_of(key: Key) -> str:
    return checkpoint.format_vkey(*key)


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    seq: int
    created_ms: int
    old_vkey: str
    new_vkey: str
    old_signature: bytes
    new_signature: bytes

    @property
    def dedup_id(self) -> str:
        return self.new_vkey

    def to_json(self) -> dict[str, Any]:
        return {
            "v": ROTATION_VERSION,
            "created_ms": self.created_ms,
            "seq": self.seq,
            "old_vkey": self.old_vkey,
            "new_vkey": self.new_vkey,
            "old_signature": base64.b64encode(self.old_signature).decode("ascii"),
            "new_signature": base64.b64encode(self.new_signature).decode("ascii"),
        }

    def encode(self) -> bytes:
        return canonical_json(self.to_json())


def make_record(
    origin: str, seq: int, created_ms: int, old: Ed25519PrivateKey, new: Ed25519PrivateKey
) -> SigningKeyRecord:
    """A rotation record at position `seq`, signed by the old and the new key."""
    old_vkey = checkpoint.format_vkey(origin, old.public_key())
    new_vkey = checkpoint.format_vkey(origin, new.public_key())
    message = rotation_message(origin, seq, old_vkey, new_vkey)
    return SigningKeyRecord(seq, created_ms, old_vkey, new_vkey, old.sign(message), new.sign(message))


def _uint(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def parse_record(payload: bytes) -> SigningKeyRecord:
    """A SIGNING_KEY payload in canonical form (signatures not checked here: see `KeyChain.rotate`)."""
    d = json_object(payload, _FIELDS, ROTATION_VERSION, RotationError, "signing-key record")
    if not (_uint(d["seq"]) and _uint(d["created_ms"])):
        raise RotationError("seq and created_ms must be non-negative integers")
    strings = [d[k] for k in ("old_vkey", "new_vkey", "old_signature", "new_signature")]
    if not all(isinstance(s, str) for s in strings):
        raise RotationError("keys and signatures must be strings")
    try:
        old_sig, new_sig = (base64.b64decode(d[k], validate=True) for k in ("old_signature", "new_signature"))
    except (binascii.Error, ValueError):
        raise RotationError("a signature is not base64") from None
    rec = SigningKeyRecord(d["seq"], d["created_ms"], d["old_vkey"], d["new_vkey"], old_sig, new_sig)
    if rec.encode() != payload:
        raise RotationError("signing-key record is not in canonical form")
    return rec


def _verify(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


class KeyChain:
    """The signing keys of one log in order, from the pinned key through every checked rotation record."""

    def __init__(self, pinned: Key) -> None:
        self.origin = pinned[0]
        #: (position of the rotation record, key from then on); the pinned key at position -1.
        self._keys: list[tuple[int, Key]] = [(-1, pinned)]
        #: position of each rotation record -> its (signed) time
        self._since: dict[int, int] = {}

    @property
    def pinned(self) -> Key:
        return self._keys[0][1]

    @property
    def current(self) -> Key:
        return self._keys[-1][1]

    @property
    def rotations(self) -> list[int]:
        """Positions of the rotation records, in log order."""
        return [seq for seq, _ in self._keys[1:]]

    def vkeys(self) -> list[str]:
        """Every key of the chain as a verifier key string, pinned first."""
        return [vkey_of(k) for _, k in self._keys]

    def retired_by(self, vkey: str) -> int | None:
        """The position of the rotation record that retired `vkey`, if it is a retired key of this chain."""
        for (_, key), (seq, _) in zip(self._keys, self._keys[1:], strict=False):
            if vkey_of(key) == vkey:
                return seq
        return None

    def copy(self) -> KeyChain:
        chain = KeyChain(self.pinned)
        chain._keys = list(self._keys)
        chain._since = dict(self._since)
        return chain

    def key_at(self, size: int) -> Key:
        """The key a checkpoint at tree size `size` must be signed by."""
        key = self._keys[0][1]
        for seq, k in self._keys[1:]:
            if seq < size:
                key = k
        return key

    def rotate(self, seq: int, rec: SigningKeyRecord) -> None:
        """Check the rotation record at `seq` against the current key and take its new key; raises
        LogIntegrityError naming the record."""

        def bad(why: str) -> LogIntegrityError:
            return LogIntegrityError(seq, f"signing-key rotation record {seq}: {why}", check=Check.SIGNING_KEY)

        if seq <= self._keys[-1][0]:
            raise bad("out of order")
        if rec.seq != seq:
            raise bad(f"it names position {rec.seq}")
        old = self.current
        if rec.old_vkey != vkey_of(old):
            raise LogIntegrityError(
                seq,
                f"signing-key rotation record {seq}: it hands over from a key that is not the current one",
                vkey_of(old),
                rec.old_vkey,
                check=Check.SIGNING_KEY,
            )
        try:
            new = checkpoint.parse_vkey(rec.new_vkey)
        except checkpoint.CheckpointError as exc:
            raise bad(f"the new key is malformed: {exc}") from None
        if new[0] != self.origin or vkey_of(new) != rec.new_vkey:
            raise bad("the new key is not named for this log")
        if rec.new_vkey in self.vkeys():
            raise bad("the new key was used before in this log")
        message = rotation_message(self.origin, seq, rec.old_vkey, rec.new_vkey)
        if not _verify(old[1], rec.old_signature, message):
            raise bad("the signature by the old (current) key does not verify")
        if not _verify(new[1], rec.new_signature, message):
            raise bad("the signature by the new key does not verify")
        self._keys.append((seq, new))
        self._since[seq] = rec.created_ms

    def verify_checkpoint(
        self, note: str | bytes, size: int | None = None, *, check_origin: bool = True
    ) -> checkpoint.Checkpoint:
        """The checkpoint in `note` once signed by the key current at its tree size (and from this log).

        The size is read from the note before its signature is checked only to choose the key; a note
        whose size was changed no longer verifies. With `size`, the note must be for that size (else the
        CheckpointError names the size). Without `check_origin` the caller checks the origin. Raises
        CheckpointError.
        """
        cp, signatures = checkpoint.parse_checkpoint_note(note)
        if size is not None and cp.size != size:
            raise checkpoint.CheckpointError(checkpoint.Reason.BAD_SIZE, f"expected {size}, found {cp.size}")
        origin = self.origin if check_origin else None
        name, pub = self.key_at(cp.size)
        ids = {(s.name, s.key_id) for s in signatures}
        if (name, checkpoint.key_id(name, pub)) not in ids:
            for seq, (later_name, later) in self._keys[1:]:
                if seq >= cp.size and (later_name, checkpoint.key_id(later_name, later)) in ids:
                    return self._sealed_later(note, cp, seq, (later_name, later), origin)
        return checkpoint.verify_checkpoint_note(note, name, pub, origin=origin)

    def _sealed_later(
        self, note: str | bytes, cp: checkpoint.Checkpoint, seq: int, key: Key, origin: str | None
    ) -> checkpoint.Checkpoint:
        """A checkpoint at a size before rotation record `seq`, signed by the key it rotated in: a prefix
        sealed after the rotation (a month-end seal), valid only if its signed time is not before it."""
        verified = checkpoint.verify_checkpoint_note(note, *key, origin=origin)
        if verified.timestamp_ms is None or verified.timestamp_ms < self._since[seq]:
            raise checkpoint.CheckpointError(
                checkpoint.Reason.UNKNOWN_KEY,
                f"signed by a key rotated in only at record {seq}, at a time before that rotation",
            )
        return verified


def chain_from_rows(pinned: Key, rows: Iterable[Sequence[object]]) -> KeyChain:
    """The chain from the stored rows `ROTATION_ROWS_SQL` selects: (seq, header, commitment, body).

    Rows of other types (an event whose keyed tag happens to share the prefix) are skipped, and so are
    damaged rows (the record walk of `verify` names those); a rotation record that does not open or verify
    raises LogIntegrityError naming it.
    """
    chain = KeyChain(pinned)
    for seq, *columns in rows:
        if not isinstance(seq, int) or not all(isinstance(v, bytes | memoryview) for v in columns):
            continue
        header_b, commit, body = (bytes(v) for v in columns if isinstance(v, bytes | memoryview))
        try:
            header = format.unpack_header(header_b)
        except format.FormatError:
            continue
        if header.type != format.RecordType.SIGNING_KEY:
            continue
        chain.rotate(seq, open_record(seq, header, commit, body))
    return chain


def open_record(seq: int, header: format.RecordHeader, commit: bytes, body: bytes) -> SigningKeyRecord:
    """The payload of a stored SIGNING_KEY record, checked against its commitment (no key needed)."""
    try:
        _, payload = format.open_clear(header, commit, body)
        return parse_record(payload)
    except (format.RecordAuthError, RotationError) as exc:
        check = Check.COMMITMENT if isinstance(exc, format.CommitmentMismatch) else Check.CLEAR_RECORD
        raise LogIntegrityError(seq, f"signing-key record: {exc}", check=check) from None


def cosign_note(note: str, name: str, key: Ed25519PrivateKey) -> str:
    """`note` with one more signature line, by `key`, over the same text (a note signed by two keys)."""
    text, _ = checkpoint.open_note(note)
    extra = checkpoint.sign_note(text, name, key)[len(text) + 1 :]
    return note + extra
