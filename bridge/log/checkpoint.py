"""Signed checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes, Ed25519.

A checkpoint commits to the whole log at one size. The note we produce is::

    <origin>\\n
    <tree size, decimal, no leading zeros>\\n
    <root hash, standard padded base64 of 32 bytes>\\n
    timestamp <unix milliseconds>\\n        (optional extension line)
    \\n
    — <key name> <base64(key ID (4 bytes) || Ed25519 signature (64 bytes))>\\n

The signature covers the body: every byte up to and including the newline
before the blank line. The dash is U+2014 followed by one space. The key ID is
SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]. A verifier key
("vkey") is written as in golang.org/x/mod/sumdb/note:
`<name>+<key ID, 8 hex digits>+<base64(0x01 || public key)>`.

Contract (pure: text in, values out; no I/O):
- Notes must be UTF-8 with no control characters but newline; the body is what
  precedes the last blank line; signature lines are strictly `— name base64`.
- `verify_checkpoint_note` checks signatures before it reads the body (a note's
  text means nothing until verified). Signatures by other keys (a rotated key,
  a cosigner) are ignored, but a failing signature by the given key rejects the
  note, and at least one valid signature by it is required.
- The body is parsed strictly: canonical decimal size, canonical base64 of
  exactly 32 bytes, and no extension line except `timestamp`. Anything else
  raises `CheckpointError` whose `reason` names the failure and `evidence`
  quotes the offending text.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bridge.errors import DataError

SIGNATURE_PREFIX = "\u2014 "  # em dash, space
ALG_ED25519 = 0x01
KEY_ID_SIZE = 4
ED25519_SIGNATURE_SIZE = 64
ROOT_SIZE = 32
MAX_SIGNATURES = 100  # the spec asks for at least 16; Go's sumdb/note allows 100
MAX_TREE_SIZE = 2**64 - 1
MAX_TIMESTAMP_MS = 2**63 - 1
TIMESTAMP_PREFIX = "timestamp "
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}", re.ASCII)
_KEY_ID_HEX = re.compile(r"[0-9a-fA-F]{8}", re.ASCII)


class Reason(enum.StrEnum):
    """Why a note, checkpoint or verifier key was refused."""

    MALFORMED_NOTE = "malformed note"
    MALFORMED_KEY = "malformed verifier key"
    UNKNOWN_KEY = "no signature by the given key"
    BAD_SIGNATURE = "signature by the given key does not verify"
    MALFORMED_CHECKPOINT = "malformed checkpoint body"
    BAD_ORIGIN = "bad origin"
    BAD_SIZE = "tree size is not canonical decimal"
    BAD_ROOT = "root hash is not canonical base64 of 32 bytes"
    BAD_TIMESTAMP = "timestamp is not canonical decimal"
    BAD_EXTENSION = "unsupported extension line"
    BAD_KEY_NAME = "bad key name"


class CheckpointError(DataError, ValueError):
    """A note, checkpoint or verifier key was refused; `evidence` quotes what was wrong."""

    def __init__(self, reason: Reason, evidence: object = None) -> None:
        self.reason = reason
        self.evidence = evidence
        super().__init__(str(reason) if evidence is None else f"{reason}: {_quote(evidence)}")


def _quote(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def b64(raw: bytes) -> str:
    """Standard, padded base64 as text (signed notes, keys; C2SP signed-note)."""
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes | None:
    """Strict, canonical standard base64; None if `text` is anything else."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    return raw if b64(raw) == text else None


def _has_control(text: str) -> bool:
    return any(ch < " " and ch != "\n" for ch in text)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def _valid_key_name(name: str) -> bool:
    return bool(name) and _is_utf8(name) and "+" not in name and not any(ch.isspace() or ch < " " for ch in name)


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """The 4-byte Ed25519 key ID: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    blob = name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + _raw_public(public_key)
    return hashlib.sha256(blob).digest()[:KEY_ID_SIZE]


def format_vkey(name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key string `<name>+<key ID hex>+<base64(0x01 || public key)>`."""
    if not _valid_key_name(name):
        raise CheckpointError(Reason.BAD_KEY_NAME, name)
    encoded = b64(bytes([ALG_ED25519]) + _raw_public(public_key))
    return f"{name}+{key_id(name, public_key).hex()}+{encoded}"


def parse_vkey(text: str) -> tuple[str, Ed25519PublicKey]:
    """Parse a verifier key string; surrounding whitespace (a file's newline) is ignored."""
    parts = text.strip().split("+", 2)  # base64 may itself contain "+"
    if len(parts) != 3:
        raise CheckpointError(Reason.MALFORMED_KEY, text)
    name, id_hex, key64 = parts
    if not _valid_key_name(name):
        raise CheckpointError(Reason.MALFORMED_KEY, f"bad key name {name!r}")
    if not _KEY_ID_HEX.fullmatch(id_hex):
        raise CheckpointError(Reason.MALFORMED_KEY, f"key ID is not 8 hex digits: {id_hex!r}")
    blob = unb64(key64)
    if blob is None or len(blob) != 1 + 32:
        raise CheckpointError(Reason.MALFORMED_KEY, f"key is not base64 of 33 bytes: {key64!r}")
    if blob[0] != ALG_ED25519:
        raise CheckpointError(Reason.MALFORMED_KEY, f"unsupported algorithm byte {blob[0]:#04x}")
    public_key = Ed25519PublicKey.from_public_bytes(blob[1:])
    expected = key_id(name, public_key).hex()
    if id_hex.lower() != expected:
        raise CheckpointError(Reason.MALFORMED_KEY, f"key ID {id_hex} does not match name and key ({expected})")
    return name, public_key


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line of a note, decoded but not verified."""

    name: str
    key_id: bytes
    signature: bytes

    @property
    def line(self) -> str:
        """The signature line as it appears in the note (without its newline)."""
        return f"{SIGNATURE_PREFIX}{self.name} {b64(self.key_id + self.signature)}"


def _check_text(text: str) -> None:
    if not text.endswith("\n") or _has_control(text) or not _is_utf8(text):
        raise CheckpointError(Reason.MALFORMED_NOTE, "text must be UTF-8, end in a newline, no control chars")


def sign_note(text: str, key_name: str, private_key: Ed25519PrivateKey) -> str:
    """A signed note: `text`, a blank line, one Ed25519 signature line over `text`."""
    _check_text(text)
    if not _valid_key_name(key_name):
        raise CheckpointError(Reason.BAD_KEY_NAME, key_name)
    kid = key_id(key_name, private_key.public_key())
    sig = NoteSignature(key_name, kid, private_key.sign(text.encode("utf-8")))
    return f"{text}\n{sig.line}\n"


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(SIGNATURE_PREFIX):
        raise CheckpointError(Reason.MALFORMED_NOTE, f"not a signature line: {line!r}")
    name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    blob = unb64(encoded)
    if not _valid_key_name(name) or blob is None or len(blob) <= KEY_ID_SIZE:
        raise CheckpointError(Reason.MALFORMED_NOTE, f"bad signature line: {line!r}")
    return NoteSignature(name, blob[:KEY_ID_SIZE], blob[KEY_ID_SIZE:])


def open_note(note: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Split a note into its text and decoded signatures. Verifies nothing."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CheckpointError(Reason.MALFORMED_NOTE, f"not UTF-8 at byte {exc.start}") from None
    if _has_control(note) or not _is_utf8(note):
        raise CheckpointError(Reason.MALFORMED_NOTE, "control character or invalid UTF-8")
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointError(Reason.MALFORMED_NOTE, "no blank line before the signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise CheckpointError(Reason.MALFORMED_NOTE, "signature block missing or not ending in a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(Reason.MALFORMED_NOTE, f"{len(lines)} signatures, limit {MAX_SIGNATURES}")
    return text, [_parse_signature_line(line) for line in lines]


def verify_note(note: str | bytes, key_name: str, public_key: Ed25519PublicKey) -> str:
    """The text of `note` once at least one signature by (key_name, public_key) verifies."""
    text, signatures = open_note(note)
    kid = key_id(key_name, public_key)
    ours = [s for s in signatures if s.name == key_name and s.key_id == kid]
    if not ours:
        seen = ", ".join(f"{s.name}+{s.key_id.hex()}" for s in signatures)
        raise CheckpointError(Reason.UNKNOWN_KEY, f"wanted {key_name}+{kid.hex()}, note has {seen}")
    message = text.encode("utf-8")
    for sig in ours:
        try:
            if len(sig.signature) != ED25519_SIGNATURE_SIZE:
                raise InvalidSignature
            public_key.verify(sig.signature, message)
        except InvalidSignature:
            raise CheckpointError(Reason.BAD_SIGNATURE, sig.line) from None
    return text


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: `size` leaves with Merkle root `root`, issued by `origin`."""

    origin: str
    size: int
    root: bytes
    timestamp_ms: int | None = None

    def __post_init__(self) -> None:
        if not self.origin or _has_control(self.origin) or "\n" in self.origin or not _is_utf8(self.origin):
            raise CheckpointError(Reason.BAD_ORIGIN, self.origin)
        if not _is_uint(self.size, MAX_TREE_SIZE):
            raise CheckpointError(Reason.BAD_SIZE, self.size)
        if not isinstance(self.root, bytes) or len(self.root) != ROOT_SIZE:
            raise CheckpointError(Reason.BAD_ROOT, self.root)
        if self.timestamp_ms is not None and not _is_uint(self.timestamp_ms, MAX_TIMESTAMP_MS):
            raise CheckpointError(Reason.BAD_TIMESTAMP, self.timestamp_ms)

    def body(self) -> str:
        """The note text that gets signed."""
        lines = [self.origin, str(self.size), b64(self.root)]
        if self.timestamp_ms is not None:
            lines.append(f"{TIMESTAMP_PREFIX}{self.timestamp_ms}")
        return "\n".join(lines) + "\n"


def _is_uint(value: object, maximum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum


def _parse_decimal(text: str, maximum: int, reason: Reason) -> int:
    if not _DECIMAL.fullmatch(text) or int(text) > maximum:
        raise CheckpointError(reason, text)
    return int(text)


def parse_checkpoint_body(text: str) -> Checkpoint:
    """Parse a checkpoint note text (origin, size, root, optional timestamp line)."""
    if not text.endswith("\n"):
        raise CheckpointError(Reason.MALFORMED_CHECKPOINT, "body does not end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or any(not line for line in lines):
        raise CheckpointError(Reason.MALFORMED_CHECKPOINT, f"need 3 or 4 non-empty lines, got {lines!r}")
    origin, size_line, root_line, *extensions = lines
    size = _parse_decimal(size_line, MAX_TREE_SIZE, Reason.BAD_SIZE)
    root = unb64(root_line)
    if root is None or len(root) != ROOT_SIZE:
        raise CheckpointError(Reason.BAD_ROOT, root_line)
    timestamp_ms: int | None = None
    if extensions:
        first = extensions[0]
        if len(extensions) > 1 or not first.startswith(TIMESTAMP_PREFIX):
            raise CheckpointError(Reason.BAD_EXTENSION, extensions)
        timestamp_ms = _parse_decimal(first[len(TIMESTAMP_PREFIX) :], MAX_TIMESTAMP_MS, Reason.BAD_TIMESTAMP)
    return Checkpoint(origin, size, root, timestamp_ms)


def sign_checkpoint(cp: Checkpoint, key_name: str, private_key: Ed25519PrivateKey) -> str:
    """The signed note text for `cp`, signed by `private_key` under `key_name`."""
    return sign_note(cp.body(), key_name, private_key)


def parse_checkpoint_note(note: str | bytes) -> tuple[Checkpoint, list[NoteSignature]]:
    """Parse a checkpoint note WITHOUT verifying it: for display and diagnosis only."""
    text, signatures = open_note(note)
    return parse_checkpoint_body(text), signatures


def verify_checkpoint_note(
    note: str | bytes,
    vkey_name: str,
    public_key: Ed25519PublicKey,
    *,
    origin: str | None = None,
) -> Checkpoint:
    """The checkpoint in `note`, once signed by (vkey_name, public_key) and well formed.

    With `origin`, also require the checkpoint to come from that log (a key
    shared by two logs must not let one log's checkpoint stand in for the other's).
    """
    checkpoint = parse_checkpoint_body(verify_note(note, vkey_name, public_key))
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(Reason.BAD_ORIGIN, f"expected {origin!r}, found {checkpoint.origin!r}")
    return checkpoint
