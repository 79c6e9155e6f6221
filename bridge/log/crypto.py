"""Symmetric crypto for the log: AEAD records, wrapped data keys, keyed tags.

All primitives come from `cryptography` (AES-256-GCM, HMAC-SHA256, keyed BLAKE2b from hashlib); nothing is
hand-rolled. Nonces are random 96-bit values, never derived from the sequence
number: a restored backup can reuse a sequence number, and a repeated
(key, nonce) pair is fatal for GCM. Data keys change only when an operator runs
`chatarchief rotate-key` (nothing rotates on a timer; docs/keys.md advises at
least yearly), which keeps each key far below GCM's 2^32 random-nonce message limit.

Contract: every function is pure apart from drawing random bytes; failures to
authenticate raise `AuthError`, never return garbage.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bridge.errors import DataError

KEY_BYTES = 32
NONCE_BYTES = 12
SALT_BYTES = 16

_DEK_DOMAIN = b"chatarchief/v1/data-key\x00"
_KEK_CHECK_DOMAIN = b"chatarchief/v1/kek-check\x00"
RECORD_DOMAIN = b"chatarchief/v1/record\x00"


class AuthError(DataError):
    """Ciphertext or wrapped key failed authentication (wrong key or tampering)."""


def random_key() -> bytes:
    return os.urandom(KEY_BYTES)


def random_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def wrap_key(kek: bytes, log_id: bytes, key_id: int, purpose: str, key: bytes) -> bytes:
    """Encrypt a data key under the key-encryption key; binds log, key id and purpose."""
    nonce = random_nonce()
    ad = _wrap_ad(log_id, key_id, purpose)
    return nonce + AESGCM(kek).encrypt(nonce, key, ad)


def unwrap_key(kek: bytes, log_id: bytes, key_id: int, purpose: str, wrapped: bytes) -> bytes:
    nonce, ct = wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:]
    try:
        key = AESGCM(kek).decrypt(nonce, ct, _wrap_ad(log_id, key_id, purpose))
    except InvalidTag as exc:
        raise AuthError(f"key {key_id} ({purpose}) does not unwrap") from exc
    if len(key) != KEY_BYTES:
        raise AuthError(f"key {key_id} has length {len(key)}")
    return key


def _wrap_ad(log_id: bytes, key_id: int, purpose: str) -> bytes:
    return _DEK_DOMAIN + log_id + key_id.to_bytes(4, "big") + purpose.encode("ascii")


def kek_check(kek: bytes, log_id: bytes) -> bytes:
    """A value stored in the data dir that tells 'wrong key file' apart from tampering."""
    return hmac.new(kek, _KEK_CHECK_DOMAIN + log_id, hashlib.sha256).digest()


def keyed_tag(key: bytes, *parts: str, length: int = 16) -> bytes:
    """Keyed BLAKE2b (a standard MAC mode) over NUL-separated parts, truncated.

    Used for conversation tags and dedup keys: keeps room ids and event ids out
    of the plaintext index while still letting the store find duplicates.
    """
    msg = "\x00".join(parts).encode("utf-8", "surrogatepass")  # same bytes as joining the encoded parts
    return hashlib.blake2b(msg, key=key, digest_size=length).digest()


def keyed_tag_prefix(key: bytes, *parts: str, length: int = 16) -> hashlib.blake2b:
    """The MAC state of `keyed_tag(key, *parts, *rest)` after `parts` and their separators: a copy updated
    with the rest joined by NUL gives the same tag (BLAKE2b is streamed), for many tags sharing their first
    parts without hashing those again. A test pins the equality."""
    msg = "".join(f"{part}\x00" for part in parts).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(msg, key=key, digest_size=length)


class Sealer:
    """AES-256-GCM for one data key, with the cipher object built once."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, ad)

    def open(self, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce, ciphertext, ad)
        except InvalidTag as exc:
            raise AuthError("record does not authenticate") from exc


def sealers(keys: Mapping[int, bytes]) -> dict[int, Sealer]:
    """One `Sealer` per key id, for readers that open many records."""
    return {key_id: Sealer(key) for key_id, key in keys.items()}


def seal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    return Sealer(key).seal(nonce, plaintext, ad)


def open_sealed(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    return Sealer(key).open(nonce, ciphertext, ad)


def hmac_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison for MACs and hashes."""
    return hmac.compare_digest(a, b)
