"""Content-addressed, encrypted media store (`<data_dir>/blobs/`).

Contract: `await BlobStore.put(data, media_type)` returns `(blob_id, sha256)`
only after the encrypted file is durable (written to a temp file, fsynced,
renamed into place, directory fsynced), so an event that references the blob
is committed after the blob exists. `blob_id` is a keyed tag of the plaintext's
SHA-256: the same media stored twice is one file, and the id reveals nothing
about the content to someone without the key. `get(blob_id)` decrypts and
checks the bytes against the id.

File format: magic `CAB1` | key id (u32) | nonce (12) | AES-256-GCM ciphertext,
associated data = magic | log id | blob id | key id, so a blob cannot be
swapped for another or moved between logs. Temp files hold ciphertext only.
Media here is bounded by `max_media_bytes` (100 MiB default), so one AEAD
message per blob is well inside GCM's limits.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from bridge.durable import write_atomic
from bridge.errors import Check, LogIntegrityError, StorageError
from bridge.log import crypto

MAGIC = b"CAB1"
_PREFIX = struct.Struct(">4sI12s")


@dataclass(frozen=True)
class MediaKeys:
    """The key material a blob store needs, handed out by the LogStore."""

    log_id: bytes
    index_key: bytes
    data_keys: dict[int, bytes]
    current: int

    def __repr__(self) -> str:
        return f"MediaKeys(log_id={self.log_id.hex()}, current={self.current}, secrets=<hidden>)"


class BlobStore:
    def __init__(self, root: Path, keys: MediaKeys) -> None:
        self._root = root
        self._keys = keys

    @property
    def root(self) -> Path:
        return self._root

    def blob_id(self, sha256_hex: str) -> str:
        return crypto.keyed_tag(self._keys.index_key, "blob", sha256_hex, length=20).hex()

    def path(self, blob_id: str) -> Path:
        if len(blob_id) != 40 or not all(c in "0123456789abcdef" for c in blob_id):
            raise ValueError(f"not a blob id: {blob_id[:60]!r}")
        return self._root / blob_id[:2] / blob_id

    async def put(self, data: bytes, media_type: str | None = None) -> tuple[str, str]:
        """Store `data` encrypted; returns (blob_id, plaintext sha256 hex) once durable."""
        return await asyncio.to_thread(self._put, data)

    def _put(self, data: bytes) -> tuple[str, str]:
        digest = hashlib.sha256(data).hexdigest()
        blob_id = self.blob_id(digest)
        target = self.path(blob_id)
        if target.exists():
            return blob_id, digest
        nonce = crypto.random_nonce()
        key_id = self._keys.current
        prefix = _PREFIX.pack(MAGIC, key_id, nonce)
        body = crypto.seal(self._keys.data_keys[key_id], nonce, data, self._ad(blob_id, key_id))
        try:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(target, prefix + body)
        except OSError as exc:
            raise StorageError(f"could not store media blob: {exc.strerror}") from exc
        return blob_id, digest

    def get(self, blob_id: str) -> bytes:
        """Decrypt a blob; raises LogIntegrityError if it is altered or not the content its id names."""
        raw = self.path(blob_id).read_bytes()
        if len(raw) < _PREFIX.size:
            raise LogIntegrityError(
                None, f"blob {blob_id} is truncated", f">= {_PREFIX.size} bytes", f"{len(raw)} bytes", check=Check.BLOB
            )
        magic, key_id, nonce = _PREFIX.unpack_from(raw)
        key = self._keys.data_keys.get(key_id)
        if magic != MAGIC or key is None:
            raise LogIntegrityError(None, f"blob {blob_id} has an unknown format or key", check=Check.BLOB)
        try:
            data = crypto.open_sealed(key, nonce, raw[_PREFIX.size :], self._ad(blob_id, key_id))
        except crypto.AuthError:
            raise LogIntegrityError(None, f"blob {blob_id} does not authenticate", check=Check.BLOB) from None
        named = self.blob_id(hashlib.sha256(data).hexdigest())
        if not crypto.hmac_equal(bytes.fromhex(blob_id), bytes.fromhex(named)):
            raise LogIntegrityError(
                None, f"blob {blob_id} holds other content than its id names", blob_id, named, check=Check.BLOB
            )
        return data

    def _ad(self, blob_id: str, key_id: int) -> bytes:
        return MAGIC + self._keys.log_id + bytes.fromhex(blob_id) + key_id.to_bytes(4, "big")
