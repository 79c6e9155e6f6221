"""Signed notes of any log, verifier keys and `cosignature/v1` (pure: text in, values out; no I/O).

Follows the C2SP texts byte for byte (signed-note.md, tlog-checkpoint.md, tlog-cosignature.md at
C2SP/C2SP 5ba5ee8):

- a note is text ending in a newline, a blank line, then lines `— <key name> base64(key ID (4) || sig)`;
  the text is what precedes the LAST blank line (`bridge.log.checkpoint.open_note` splits it);
- key ID = SHA-256(name || 0x0A || type || public key)[:4]; type 0x01 is an Ed25519 note signature over
  the text, 0x04 an Ed25519 cosignature whose signature is `timestamp u64 BE || Ed25519(64)` over
  `"cosignature/v1\\n" "time <timestamp>\\n" || text`;
- a vkey is `<name>+<key ID hex>+base64(type || 32-byte public key)`;
- a checkpoint text is origin, size (canonical decimal), root (canonical base64 of 32 bytes) and any
  non-empty extension lines, each ending in a newline. Unlike `bridge.log.checkpoint` (our own log, which
  allows only its `timestamp` line) any extension line is accepted here: the witness serves other logs.

Verifiers ignore signatures whose (name, key ID) is not a known key; a known key whose signature fails
makes the whole note invalid (`BadSignature`), as signed-note.md asks.

A witness key file holds one line in golang.org/x/mod/sumdb/note's private-key form
`PRIVATE+KEY+<name>+<key ID hex>+base64(0x04 || 32-byte Ed25519 seed)`, so tools of that ecosystem read it.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from bridge.errors import DataError
from bridge.log.checkpoint import SIGNATURE_PREFIX, CheckpointError, NoteSignature, b64, open_note, unb64

__all__ = [
    "ALG_COSIGNATURE_V1",
    "ALG_ED25519",
    "BadSignature",
    "CosignerKey",
    "LogCheckpoint",
    "NoteError",
    "NoteSignature",
    "Verifier",
    "cosignature_message",
    "format_note",
    "open_note",
    "parse_checkpoint",
    "parse_vkey",
    "verified_signatures",
]

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
_ALGS = (ALG_ED25519, ALG_COSIGNATURE_V1)
ED25519_SIG = 64
COSIG_SIG = 8 + ED25519_SIG
MAX_TIMESTAMP = 2**63 - 1
MAX_TREE_SIZE = 2**64 - 1
HASH_SIZE = 32
PRIVATE_PREFIX = "PRIVATE+KEY+"
_DECIMAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_HEX8 = re.compile(r"[0-9a-f]{8}", re.ASCII)


class NoteError(DataError, ValueError):
    """A note, checkpoint, key or cosignature that does not parse as the spec says."""


class BadSignature(NoteError):
    """A signature line names a known key (name and key ID) but does not verify: the note is invalid."""


def valid_key_name(name: str) -> bool:
    """Non-empty, no Unicode space, no '+', no control character, encodable as UTF-8."""
    if not name or "+" in name or any(ch.isspace() or ch < " " for ch in name):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def key_id(name: str, alg: int, public: bytes) -> bytes:
    """SHA-256(name || 0x0A || type || public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([alg]) + public).digest()[:4]


def cosignature_message(text: str, timestamp: int) -> bytes:
    """The bytes a `cosignature/v1` signs: header line, time line, the whole checkpoint text."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise NoteError(f"cosignature timestamp {timestamp} is outside 0..2^63-1")
    return f"cosignature/v1\ntime {timestamp}\n".encode("ascii") + text.encode("utf-8")


@dataclass(frozen=True, slots=True)
class Verifier:
    """A public key a verifier trusts: name, signature type (0x01 note, 0x04 cosignature), 32 key bytes."""

    name: str
    alg: int
    public: bytes

    def __post_init__(self) -> None:
        if not valid_key_name(self.name):
            raise NoteError(f"bad key name {self.name!r}: non-empty, no spaces, no '+'")
        if self.alg not in _ALGS:
            raise NoteError(f"unsupported signature type {self.alg:#04x} (this reads 0x01 and 0x04)")
        if len(self.public) != 32:
            raise NoteError(f"an Ed25519 public key is 32 bytes, got {len(self.public)}")

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.alg, self.public)

    @property
    def vkey(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{b64(bytes([self.alg]) + self.public)}"

    def matches(self, sig: NoteSignature) -> bool:
        """Is `sig` by this key (name and key ID both)? Signatures that are not are ignored."""
        return sig.name == self.name and sig.key_id == self.key_id

    def timestamp(self, sig: NoteSignature) -> int | None:
        """A cosignature's timestamp (None for a plain note signature or a malformed one)."""
        if self.alg != ALG_COSIGNATURE_V1 or len(sig.signature) != COSIG_SIG:
            return None
        (ts,) = struct.unpack(">Q", sig.signature[:8])
        return int(ts) if ts <= MAX_TIMESTAMP else None

    def verify(self, text: str, sig: NoteSignature) -> bool:
        """Does `sig` (already matched to this key) verify over the note text `text`?"""
        key = Ed25519PublicKey.from_public_bytes(self.public)
        if self.alg == ALG_ED25519:
            if len(sig.signature) != ED25519_SIG:
                return False
            message, raw = text.encode("utf-8"), sig.signature
        else:
            ts = self.timestamp(sig)
            if ts is None:
                return False
            message, raw = cosignature_message(text, ts), sig.signature[8:]
        try:
            key.verify(raw, message)
        except InvalidSignature:
            return False
        return True


def parse_vkey(text: str) -> Verifier:
    """A verifier key `<name>+<key ID hex>+<base64(type || key)>` (surrounding whitespace ignored)."""
    parts = text.strip().split("+", 2)
    if len(parts) != 3:
        raise NoteError(f"not a verifier key (name+id+key): {text.strip()[:80]!r}")
    name, id_hex, key64 = parts
    if not valid_key_name(name):
        raise NoteError(f"verifier key has a bad name {name!r}")
    if not _HEX8.fullmatch(id_hex.lower()):
        raise NoteError(f"verifier key ID is not 8 hex digits: {id_hex!r}")
    blob = unb64(key64)
    if blob is None or len(blob) != 33:
        raise NoteError(f"verifier key is not base64 of a type byte and 32 key bytes: {key64[:60]!r}")
    verifier = Verifier(name, blob[0], blob[1:])
    if verifier.key_id.hex() != id_hex.lower():
        raise NoteError(f"verifier key ID {id_hex} does not match its name and key ({verifier.key_id.hex()})")
    return verifier


@dataclass(frozen=True)
class CosignerKey:
    """A witness's private key: it cosigns (signature type 0x04) under `name`."""

    name: str
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls, name: str) -> CosignerKey:
        if not valid_key_name(name):
            raise NoteError(f"bad witness name {name!r}: non-empty, no spaces, no '+' (e.g. witness.example.org/w1)")
        return cls(name, Ed25519PrivateKey.generate())

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, ALG_COSIGNATURE_V1, self.private.public_key().public_bytes_raw())

    def cosign(self, text: str, timestamp: int) -> NoteSignature:
        """A `cosignature/v1` over the checkpoint text at POSIX time `timestamp` (seconds)."""
        raw = self.private.sign(cosignature_message(text, timestamp))
        return NoteSignature(self.name, self.verifier.key_id, struct.pack(">Q", timestamp) + raw)

    def to_text(self) -> str:
        seed = self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        body = b64(bytes([ALG_COSIGNATURE_V1]) + seed)
        return f"{PRIVATE_PREFIX}{self.name}+{self.verifier.key_id.hex()}+{body}\n"

    @classmethod
    def from_text(cls, text: str) -> CosignerKey:
        line = text.strip()
        if not line.startswith(PRIVATE_PREFIX):
            raise NoteError(f"not a witness key (expected {PRIVATE_PREFIX}<name>+<id>+<key>)")
        parts = line[len(PRIVATE_PREFIX) :].split("+", 2)
        blob = unb64(parts[2]) if len(parts) == 3 else None
        if blob is None or len(blob) != 33 or blob[0] != ALG_COSIGNATURE_V1:
            raise NoteError("witness key is not base64 of 0x04 and a 32-byte Ed25519 seed")
        name, id_hex = parts[0], parts[1]
        if not valid_key_name(name):
            raise NoteError(f"witness key has a bad name {name!r}")
        key = cls(name, Ed25519PrivateKey.from_private_bytes(blob[1:]))
        if key.verifier.key_id.hex() != id_hex.lower():
            raise NoteError("witness key ID does not match its name and key: the file is damaged")
        return key


@dataclass(frozen=True, slots=True)
class LogCheckpoint:
    """A checkpoint of any log: origin, size, root and opaque extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin or any(ch < " " for ch in self.origin):
            raise NoteError(f"bad checkpoint origin {self.origin!r}")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise NoteError(f"tree size {self.size} out of range")
        if len(self.root) != HASH_SIZE:
            raise NoteError("root hash is not 32 bytes")
        if any(not line or "\n" in line or any(ch < " " for ch in line) for line in self.extensions):
            raise NoteError("extension lines must be non-empty single lines")

    def text(self) -> str:
        return "".join(f"{line}\n" for line in (self.origin, str(self.size), b64(self.root), *self.extensions))


def parse_checkpoint(text: str) -> LogCheckpoint:
    """The checkpoint in a note text (tlog-checkpoint.md: at least three non-empty lines, newline-terminated)."""
    if not text.endswith("\n"):
        raise NoteError("checkpoint text does not end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or any(not line for line in lines):
        raise NoteError("a checkpoint is at least three non-empty lines: origin, size, root")
    origin, size_line, root_line, *extensions = lines
    if not _DECIMAL.fullmatch(size_line) or int(size_line) > MAX_TREE_SIZE:
        raise NoteError(f"tree size is not canonical decimal: {size_line[:30]!r}")
    root = unb64(root_line)
    if root is None or len(root) != HASH_SIZE:
        raise NoteError(f"root hash is not canonical base64 of 32 bytes: {root_line[:60]!r}")
    return LogCheckpoint(origin, int(size_line), root, tuple(extensions))


def split_note(note: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Text and decoded signature lines of a note; verifies nothing. Raises NoteError."""
    try:
        return open_note(note)
    except CheckpointError as exc:
        raise NoteError(str(exc)) from None


def format_note(text: str, signatures: list[NoteSignature] | tuple[NoteSignature, ...]) -> str:
    """A note: text, blank line, one line per signature."""
    return text + "\n" + "".join(f"{sig.line}\n" for sig in signatures)


def format_signature_lines(signatures: list[NoteSignature] | tuple[NoteSignature, ...]) -> str:
    return "".join(f"{sig.line}\n" for sig in signatures)


def parse_signature_lines(block: str) -> list[NoteSignature]:
    """Signature lines alone (an add-checkpoint response body, a stored cosignature)."""
    if not block.endswith("\n") or not block.startswith(SIGNATURE_PREFIX):
        raise NoteError("signature lines must start with '— ' and end in a newline")
    _, sigs = split_note("x\n\n" + block)
    return sigs


def verified_signatures(
    text: str, signatures: list[NoteSignature], verifiers: list[Verifier] | tuple[Verifier, ...]
) -> list[tuple[Verifier, NoteSignature]]:
    """The signatures by known keys, each verified; unknown keys ignored; a failing known one raises."""
    good: list[tuple[Verifier, NoteSignature]] = []
    for sig in signatures:
        for verifier in verifiers:
            if not verifier.matches(sig):
                continue
            if not verifier.verify(text, sig):
                raise BadSignature(f"signature by {verifier.name}+{verifier.key_id.hex()} does not verify")
            good.append((verifier, sig))
    return good
