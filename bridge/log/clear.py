"""Payloads of the clear record types, KEY and BLOB (pure: bytes in, values out).

Clear records are stored unencrypted (`body` = salt || payload, commitment =
SHA-256(body)) because what they hold is no secret, yet must be under the
Merkle proof so that anyone can check it without a key:

- a KEY record holds one index or data key, wrapped under the key-encryption
  key (AES-256-GCM, associated data binding log id, key id and purpose). The key
  file plus the log's KEY records recover every key; the `keys` table is only an
  index of them, and `verify` (keyless) refuses a table that differs.

      {"v": 1, "key_id": n, "purpose": "index" | "data", "created_ms": n, "wrapped": base64}

- a BLOB record names one stored media file: its keyed blob id (reveals nothing
  about the content), the SHA-256 and the size of the encrypted file as stored
  in `blobs/`. Appended (once per blob) before the first event that references
  it, so keyless `verify` checks every blob exists and is unaltered.

      {"v": 1, "blob_id": hex (40), "sha256": hex (64), "size": n}

Encoding is canonical JSON (sorted keys, no whitespace); the parsers accept only
the canonical encoding and raise `ClearRecordError` for anything else.
Dedup identity (source, conversation, id) in the log: ("key", "", str(key_id))
and ("blob", "", blob_id).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.errors import DataError
from bridge.events import canonical_json

CLEAR_VERSION = 1
KEY_SOURCE = "key"
BLOB_SOURCE = "blob"
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
PURPOSES = ("index", "data")


class ClearRecordError(DataError, ValueError):
    """Bytes that are not a canonical KEY or BLOB payload (local bug or tampering)."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: int
    purpose: str
    created_ms: int
    wrapped: bytes

    def __post_init__(self) -> None:
        if not _nonneg_int(self.key_id) or not _nonneg_int(self.created_ms):
            raise ClearRecordError("key_id and created_ms must be non-negative integers")
        if self.purpose not in PURPOSES:
            raise ClearRecordError(f"key purpose must be one of {PURPOSES}")
        if not self.wrapped:
            raise ClearRecordError("wrapped key is empty")

    @property
    def dedup_id(self) -> str:
        return str(self.key_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "v": CLEAR_VERSION,
            "key_id": self.key_id,
            "purpose": self.purpose,
            "created_ms": self.created_ms,
            "wrapped": base64.b64encode(self.wrapped).decode("ascii"),
        }

    def encode(self) -> bytes:
        return canonical_json(self.to_json())


@dataclass(frozen=True, slots=True)
class BlobRecord:
    blob_id: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.blob_id, str) or not _HEX40.fullmatch(self.blob_id):
            raise ClearRecordError("blob_id must be 40 lowercase hex digits")
        if not isinstance(self.sha256, str) or not _HEX64.fullmatch(self.sha256):
            raise ClearRecordError("sha256 must be 64 lowercase hex digits")
        if not _nonneg_int(self.size):
            raise ClearRecordError("size must be a non-negative integer")

    @property
    def dedup_id(self) -> str:
        return self.blob_id

    def to_json(self) -> dict[str, Any]:
        return {"v": CLEAR_VERSION, "blob_id": self.blob_id, "sha256": self.sha256, "size": self.size}

    def encode(self) -> bytes:
        return canonical_json(self.to_json())


def _nonneg_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def json_object(
    payload: bytes,
    fields: set[str],
    version: int = CLEAR_VERSION,
    error: type[ValueError] = ClearRecordError,
    what: str = "clear record",
) -> dict[str, Any]:
    """A clear record's JSON payload: an object with exactly `fields`, `v` = `version`; else `error`."""
    try:
        d = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise error(f"payload is not JSON: {exc}") from None
    if not isinstance(d, dict) or set(d) != fields:
        raise error(f"payload must hold exactly {sorted(fields)}")
    if d["v"] != version:
        raise error(f"unsupported {what} version {d['v']!r}")
    return d


def parse_key(payload: bytes) -> KeyRecord:
    d = json_object(payload, {"v", "key_id", "purpose", "created_ms", "wrapped"})
    try:
        wrapped = base64.b64decode(d["wrapped"], validate=True) if isinstance(d["wrapped"], str) else b""
    except (binascii.Error, ValueError):
        raise ClearRecordError("wrapped key is not base64") from None
    rec = KeyRecord(d["key_id"], d["purpose"], d["created_ms"], wrapped)
    if rec.encode() != payload:
        raise ClearRecordError("key record is not in canonical form")
    return rec


def parse_blob(payload: bytes) -> BlobRecord:
    d = json_object(payload, {"v", "blob_id", "sha256", "size"})
    rec = BlobRecord(d["blob_id"], d["sha256"], d["size"])
    if rec.encode() != payload:
        raise ClearRecordError("blob record is not in canonical form")
    return rec
