"""The stored record format (pure: bytes in, values out).

A record is stored as three byte strings:

    header      82 bytes, big-endian:
                  version u8 | type u8 | seq u64 | appended_ms u64 | key_id u32 |
                  conversation tag 16 | nonce 12 | previous leaf hash 32
    commitment  SHA-256(salt || payload): commits to the plaintext; the salt (16
                random bytes) travels inside the ciphertext so short messages
                cannot be guessed from the commitment
    ciphertext  AES-256-GCM(data key[key_id], nonce, salt || payload,
                associated data = RECORD_DOMAIN || log id || header || commitment)

The Merkle leaf is RFC 9162's leaf hash of `header || commitment ||
SHA-256(ciphertext)`, so integrity, order and completeness can be checked
without any key, and a package holding plaintext, salt, header and the
ciphertext hash lets an auditor recompute the same leaf. The header carries the
previous leaf hash: a hash chain beside the tree, so `verify` can name the exact
record that changed, not only the checkpoint range.

Version 2 (format of encrypted records written since issue 15) differs in one
thing: the ciphertext encrypts salt || zstd frame of the payload
(`compression.py`); the commitment is still SHA-256(salt || payload), of the
payload itself. Version-1 records (payload stored as is) keep verifying and
opening; a log may hold both. Clear records are always version 1.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from bridge.errors import DataError
from bridge.log import compression, crypto, merkle

#: The payload is encrypted as it is (every record before issue 15, clear records, payloads over
#: `compression.MAX_PAYLOAD`).
VERSION_PLAIN = 1
#: The payload is encrypted as one zstd frame (`compression.py`); encrypted records only.
VERSION_COMPRESSED = 2
#: The version of clear records (they are never compressed: keyless `verify` reads them).
FORMAT_VERSION = VERSION_PLAIN
_HEADER = struct.Struct(">BBQQI16s12s32s")
HEADER_BYTES = _HEADER.size
#: Byte offset of the nonce inside a packed header (after version..conversation tag).
NONCE_OFFSET = 1 + 1 + 8 + 8 + 4 + 16
TAG_BYTES = 16
HASH_BYTES = 32
GENESIS_PREV = bytes(HASH_BYTES)


class RecordType(enum.IntEnum):
    EVENT = 1
    #: An information specialist's decision about an event (e.g. withhold).
    DECISION = 2
    #: A key record: one data or index key, wrapped under the KEK (clear record, see `clear.py`).
    KEY = 3
    #: A stored media blob: its id, and SHA-256 and size of the encrypted file (clear record, see `clear.py`).
    BLOB = 4
    #: A signing-key rotation: the new verifier key, signed by the old and the new key (clear, see `rotation.py`).
    SIGNING_KEY = 5


#: Record types stored in the clear: `body` is salt || payload, not encrypted, so keyless `verify` and a
#: package reader can read them. They hold nothing secret (a wrapped key, a blob's keyed id and file hash, a
#: verifier key).
CLEAR_TYPES = frozenset({RecordType.KEY, RecordType.BLOB, RecordType.SIGNING_KEY})
#: Conversation tag and nonce of a clear record (it belongs to no conversation and is not encrypted).
CLEAR_TAG = bytes(TAG_BYTES)
CLEAR_NONCE = bytes(12)


class FormatError(DataError, ValueError):
    """Bytes that are not a record of a known version/type."""


class RecordHeader(NamedTuple):
    """A parsed header (a named tuple: readers build one per record, and a frozen dataclass costs five times
    as much to construct)."""

    version: int
    type: RecordType
    seq: int
    appended_ms: int
    key_id: int
    conversation_tag: bytes
    nonce: bytes
    prev_leaf: bytes

    def pack(self) -> bytes:
        return _HEADER.pack(*self)


_TYPES: dict[int, RecordType] = {t.value: t for t in RecordType}


def unpack_header(data: bytes) -> RecordHeader:
    if len(data) != HEADER_BYTES:
        raise FormatError(f"header is {len(data)} bytes, expected {HEADER_BYTES}")
    version, rtype, seq, appended_ms, key_id, tag, nonce, prev = _HEADER.unpack(data)
    if version != VERSION_PLAIN and version != VERSION_COMPRESSED:
        raise FormatError(f"unknown record version {version}")
    record_type = _TYPES.get(rtype)
    if record_type is None:
        raise FormatError(f"unknown record type {rtype}")
    if version == VERSION_COMPRESSED and record_type in CLEAR_TYPES:
        raise FormatError(f"a {record_type.name} record is never compressed (version {version})")
    return RecordHeader(version, record_type, seq, appended_ms, key_id, tag, nonce, prev)


def commitment(plaintext: bytes) -> bytes:
    """SHA-256 of salt || payload (the plaintext as encrypted)."""
    return hashlib.sha256(plaintext).digest()


def associated_data(log_id: bytes, header: bytes, commit: bytes) -> bytes:
    return crypto.RECORD_DOMAIN + log_id + header + commit


def leaf_data(header: bytes, commit: bytes, ciphertext_hash: bytes) -> bytes:
    return header + commit + ciphertext_hash


def leaf_of(header: bytes, commit: bytes, ciphertext: bytes) -> bytes:
    """The record's Merkle leaf hash, from what is stored."""
    return merkle.leaf_hash(leaf_data(header, commit, hashlib.sha256(ciphertext).digest()))


def ad_prefix(log_id: bytes) -> bytes:
    """The part of every record's associated data that precedes its header (one per log)."""
    return crypto.RECORD_DOMAIN + log_id


def seal_record(
    sealer: crypto.Sealer,
    prefix: bytes,
    rtype: RecordType,
    seq: int,
    appended_ms: int,
    key_id: int,
    conversation_tag: bytes,
    nonce: bytes,
    prev_leaf: bytes,
    salt: bytes,
    payload: bytes,
    *,
    compress: bool = True,
) -> tuple[bytes, bytes, bytes, bytes]:
    """(header, commitment, ciphertext, leaf) of an encrypted record; `prefix` is `ad_prefix(log_id)`.

    Version 2 (the payload compressed) unless `compress` is false or the payload is larger than
    `compression.MAX_PAYLOAD`. The same bytes as `RecordHeader.pack`, `commitment`, `associated_data`,
    `compression.compress` and `leaf_of` composed (a property test pins it), built with fewer intermediate
    objects: this runs once per record on the writer's hot path. It is `prepare_plaintext` (what does not
    depend on the record's place in the log) followed by `seal_prepared` (what does).
    """
    version, commit, plaintext = prepare_plaintext(salt, payload, compress=compress)
    return seal_prepared(
        sealer, prefix, rtype, seq, appended_ms, key_id, conversation_tag, nonce, prev_leaf, version, commit, plaintext
    )


def prepare_plaintext(salt: bytes, payload: bytes, *, compress: bool = True) -> tuple[int, bytes, bytes]:
    """(version, commitment, plaintext to encrypt) of an encrypted record: the pure half of `seal_record`.

    Independent of the record's position (seq, previous leaf, key), so an import computes it in a worker
    process (`bridge.import_worker`) while the writer seals the batch before.
    """
    plaintext = salt + payload
    commit = hashlib.sha256(plaintext).digest()
    if compress and len(payload) <= compression.MAX_PAYLOAD:
        return VERSION_COMPRESSED, commit, salt + compression.compress(payload)
    return VERSION_PLAIN, commit, plaintext


def prepare_plaintexts(salts: bytes, payloads: Sequence[bytes]) -> tuple[bytes, list[bytes], list[bytes]]:
    """`prepare_plaintext(salts[16n:16n+16], payloads[n])` for every n, as columns (versions, commitments,
    plaintexts to encrypt): the same bytes (a property test pins it) in one loop, with this thread's
    compression context taken once: the import's presealing hot path (`import_worker.preseal`)."""
    width, limit = crypto.SALT_BYTES, compression.MAX_PAYLOAD
    if len(salts) != width * len(payloads):
        raise ValueError(f"{len(payloads)} payloads need {width * len(payloads)} bytes of salt, got {len(salts)}")
    compress, sha = compression.compressor().compress, hashlib.sha256
    versions = bytearray()
    commits: list[bytes] = []
    plaintexts: list[bytes] = []
    for at, payload in zip(range(0, len(salts), width), payloads, strict=True):
        salt = salts[at : at + width]
        commits.append(sha(salt + payload).digest())
        if len(payload) <= limit:
            versions.append(VERSION_COMPRESSED)
            plaintexts.append(salt + compress(payload))
        else:
            versions.append(VERSION_PLAIN)
            plaintexts.append(salt + payload)
    return bytes(versions), commits, plaintexts


def seal_prepared(
    sealer: crypto.Sealer,
    prefix: bytes,
    rtype: RecordType,
    seq: int,
    appended_ms: int,
    key_id: int,
    conversation_tag: bytes,
    nonce: bytes,
    prev_leaf: bytes,
    version: int,
    commit: bytes,
    plaintext: bytes,
) -> tuple[bytes, bytes, bytes, bytes]:
    """(header, commitment, ciphertext, leaf) from `prepare_plaintext`'s output: the half of `seal_record`
    that binds the record to its place (the header, with seq and the previous leaf, is in the AEAD's
    associated data and the leaf)."""
    header = _HEADER.pack(version, rtype, seq, appended_ms, key_id, conversation_tag, nonce, prev_leaf)
    body = sealer.seal(nonce, plaintext, prefix + header + commit)
    return header, commit, body, merkle.leaf_hash(header + commit + hashlib.sha256(body).digest())


def seal_prepared_rows(
    sealer: crypto.Sealer,
    prefix: bytes,
    rtype: RecordType,
    seq: int,
    appended_ms: int,
    key_id: int,
    prev_leaf: bytes,
    keys: Sequence[bytes],
    conversation_tags: Sequence[bytes],
    nonces: bytes,
    versions: bytes,
    commitments: Sequence[bytes],
    plaintexts: Sequence[bytes],
) -> list[tuple[int, bytes, bytes, bytes, bytes, bytes]]:
    """`seal_prepared` for consecutive records from `seq`, each chained to the one before (the first to
    `prev_leaf`), from columns: record n has `conversation_tags[n]`, nonce `nonces[12n:12n+12]`,
    `versions[n]`, `commitments[n]`, `plaintexts[n]`. Returns a row per record, (seq, keys[n], header,
    commitment, ciphertext, leaf): `keys` are passed through (the store's dedup tags), so the rows are the
    ones it inserts. The same bytes as calling `seal_prepared` in turn (a property test pins it), in one
    loop over the columns a worker sent: this is the import's sealing hot path (`LogStore.append_presealed`)."""
    pack, seal, sha, width = _HEADER.pack, sealer.seal, hashlib.sha256, crypto.NONCE_BYTES
    leaf_prefix = merkle.LEAF_PREFIX
    if len(nonces) != width * len(keys):
        raise ValueError(f"{len(keys)} records need {width * len(keys)} bytes of nonces, got {len(nonces)}")
    out: list[tuple[int, bytes, bytes, bytes, bytes, bytes]] = []
    append, prev = out.append, prev_leaf
    for key, conversation_tag, version, commit, plaintext, at in zip(
        keys, conversation_tags, versions, commitments, plaintexts, range(0, len(nonces), width), strict=True
    ):
        nonce = nonces[at : at + width]
        header = pack(version, rtype, seq, appended_ms, key_id, conversation_tag, nonce, prev)
        body = seal(nonce, plaintext, prefix + header + commit)
        prev = sha(leaf_prefix + header + commit + sha(body).digest()).digest()  # merkle.leaf_hash(leaf_data(...))
        append((seq, key, header, commit, body, prev))
        seq += 1
    return out


def seal_clear(
    rtype: RecordType, seq: int, appended_ms: int, key_id: int, prev_leaf: bytes, salt: bytes, payload: bytes
) -> tuple[bytes, bytes, bytes, bytes]:
    """(header, commitment, body, leaf) of a clear record: body = salt || payload, not encrypted."""
    if rtype not in CLEAR_TYPES:
        raise FormatError(f"a {rtype.name} record is not stored in the clear")
    header = RecordHeader(FORMAT_VERSION, rtype, seq, appended_ms, key_id, CLEAR_TAG, CLEAR_NONCE, prev_leaf).pack()
    body = salt + payload
    commit = commitment(body)
    return header, commit, body, leaf_of(header, commit, body)


def split_plaintext(plaintext: bytes) -> tuple[bytes, bytes]:
    """(salt, payload) from a decrypted record."""
    if len(plaintext) < crypto.SALT_BYTES:
        raise FormatError("plaintext shorter than its salt")
    return plaintext[: crypto.SALT_BYTES], plaintext[crypto.SALT_BYTES :]


def open_clear(header: RecordHeader, commit: bytes, body: bytes) -> tuple[bytes, bytes]:
    """(salt, payload) of a clear record (KEY, BLOB); raises RecordAuthError if it is not one or is altered."""
    if header.type not in CLEAR_TYPES:
        raise RecordAuthError(f"a {header.type.name} record is not stored in the clear")
    if header.conversation_tag != CLEAR_TAG or header.nonce != CLEAR_NONCE:
        raise RecordAuthError("a clear record must carry a zero conversation tag and nonce")
    if not crypto.hmac_equal(commitment(body), commit):
        raise CommitmentMismatch("clear record does not match its commitment")
    try:
        return split_plaintext(body)
    except FormatError as exc:
        raise RecordAuthError(str(exc)) from None


class RecordAuthError(DataError, ValueError):
    """A record that does not decrypt or whose plaintext does not match its commitment."""


class CommitmentMismatch(RecordAuthError):
    """The record opens, but its plaintext is not the one its stored commitment names."""


class PayloadFormError(RecordAuthError):
    """The record opens, but its compressed payload does not decompress within the bounds (a record no writer
    of ours makes: only a holder of the data key could)."""


def expand(plaintext: bytes) -> bytes:
    """salt || payload from the decrypted salt || zstd frame of a version-2 record."""
    salt, payload = expand_parts(plaintext)
    return salt + payload


def expand_parts(plaintext: bytes) -> tuple[bytes, bytes]:
    """(salt, payload) of the decrypted salt || zstd frame of a version-2 record (`expand` without joining
    them: the archive's record reader takes them apart anyway)."""
    if len(plaintext) < crypto.SALT_BYTES:
        raise RecordAuthError("plaintext shorter than its salt")
    try:
        return plaintext[: crypto.SALT_BYTES], compression.decompress(plaintext[crypto.SALT_BYTES :])
    except compression.DecompressionError as exc:
        raise PayloadFormError(str(exc)) from None


def open_record(
    log_id: bytes,
    sealers: Mapping[int, crypto.Sealer],
    header: RecordHeader,
    header_bytes: bytes,
    commit: bytes,
    body: bytes,
) -> bytes:
    """Decrypt a stored record and check its commitment; returns the payload (salt stripped).

    `sealers` holds one `crypto.Sealer` per data key id (`crypto.sealers`), built once per reader: building
    the AES-GCM context costs more than decrypting a record.
    """
    sealer = sealers.get(header.key_id)
    if sealer is None:
        raise RecordAuthError(f"data key {header.key_id} is not in the key table")
    try:
        plaintext = sealer.open(header.nonce, body, associated_data(log_id, header_bytes, commit))
    except crypto.AuthError as exc:
        raise RecordAuthError("ciphertext does not authenticate under its data key") from exc
    if header.version == VERSION_COMPRESSED:
        plaintext = expand(plaintext)
    if not crypto.hmac_equal(commitment(plaintext), commit):
        raise CommitmentMismatch("plaintext does not match the stored commitment")
    try:
        return split_plaintext(plaintext)[1]
    except FormatError as exc:  # authenticated, yet not salt || payload: a record no writer of ours makes
        raise RecordAuthError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Presealed:
    """A batch of EVENT entries of one source whose position-independent part is done (by an import worker,
    `bridge.import_worker`): for entry n, `tags[n]` = `schema.dedup_tag(index key, source, conversations[n],
    event_ids[n])`, `conversation_tags[n]` = `schema.conversation_tag(...)`, and `versions[n]`,
    `commitments[n]`, `plaintexts[n]` = `format.prepare_plaintext(fresh salt, canonical payload)`.
    Columns, not rows: that is how they cross the worker's pipe cheaply."""

    source: str
    conversations: list[str]
    event_ids: list[str]
    tags: list[bytes]
    conversation_tags: list[bytes]
    versions: bytes
    commitments: list[bytes]
    plaintexts: list[bytes]
