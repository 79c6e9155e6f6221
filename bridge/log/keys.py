"""The key file: the secrets that live outside the data dir.

A key file holds the key-encryption key (KEK, which wraps the data keys stored in
the data dir) and the Ed25519 signing key for checkpoints. It is JSON, written
once with mode 0600 by `init` (create-exclusive, fsynced), and refused whenever
it is readable or writable by group or others. Beside it `init` writes
`PATH.pub`: the signing key in signed-note verifier-key form, the only thing an
auditor needs to check checkpoints and packages.

Key escrow: the archive must stay readable for decades, so the organisation
keeps a copy of the key file in escrow (see docs/keys.md). There is no
crypto-shredding by design.
"""

from __future__ import annotations

import base64
import binascii
import stat
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bridge import durable
from bridge.errors import KeyFileError
from bridge.log import checkpoint, crypto

KEY_FILE_VERSION = 1


@dataclass(frozen=True)
class KeyMaterial:
    """The secrets from a key file. `repr` never shows them."""

    log_id: bytes
    kek: bytes
    signing_key: Ed25519PrivateKey

    def __repr__(self) -> str:
        return f"KeyMaterial(log_id={self.log_id.hex()}, secrets=<hidden>)"

    @property
    def key_name(self) -> str:
        return key_name_for(self.log_id)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.signing_key.public_key()

    def vkey(self) -> str:
        return checkpoint.format_vkey(self.key_name, self.public_key)

    def derive(self, purpose: str, length: int = 32) -> bytes:
        """A key for another component (e.g. nio's store pickle key), derived with HKDF from the KEK."""
        info = b"chatarchief/v1/derive\x00" + purpose.encode("ascii")
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=self.log_id, info=info).derive(self.kek)


def key_name_for(log_id: bytes) -> str:
    """The checkpoint origin and signer name of a log."""
    return f"chatarchief.invalid/log/{log_id.hex()}"


def generate(log_id: bytes) -> KeyMaterial:
    return KeyMaterial(log_id=log_id, kek=crypto.random_key(), signing_key=Ed25519PrivateKey.generate())


def check_permissions(path: Path, what: str = "key file") -> None:
    """Refuse a secret file (key file, password or token file) that group or others may read or write."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        hint = "create one with `chatarchief init`" if what == "key file" else "check the path in the config"
        raise KeyFileError(f"{what} {path} does not exist; {hint}") from None
    if not stat.S_ISREG(mode):
        raise KeyFileError(f"{what} {path} is not a regular file")
    if mode & 0o077:
        raise KeyFileError(
            f"{what} {path} has mode {stat.S_IMODE(mode):04o}: it must not be readable by group or others;"
            f" fix with `chmod 600 {path}`"
        )


def ensure_outside(key_file: Path, data_dir: Path) -> None:
    """Keys beside the data defeat the point: refuse a key file inside the data dir."""
    kf = key_file.resolve()
    dd = data_dir.resolve()
    if kf == dd or dd in kf.parents:
        raise KeyFileError(f"key file {key_file} is inside the data dir {data_dir}; keep it elsewhere")


def load(path: Path) -> KeyMaterial:
    check_permissions(path)
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise KeyFileError(f"key file {path} cannot be read as a Chatarchief key file: {exc}") from None
    try:
        if not isinstance(doc, dict) or doc.get("chatarchief_key_file") != KEY_FILE_VERSION:
            raise ValueError("not a version-1 Chatarchief key file")
        log_id = bytes.fromhex(doc["log_id"])
        kek = base64.b64decode(doc["kek"], validate=True)
        seed = base64.b64decode(doc["signing_key"], validate=True)
        if len(kek) != crypto.KEY_BYTES or len(seed) != 32 or len(log_id) != 16:
            raise ValueError("wrong key length")
        signing = Ed25519PrivateKey.from_private_bytes(seed)
    except (KeyError, ValueError, TypeError, binascii.Error) as exc:
        raise KeyFileError(f"key file {path} is malformed ({exc}); restore it from escrow") from None
    return KeyMaterial(log_id=log_id, kek=kek, signing_key=signing)


def write_new(path: Path, keys: KeyMaterial) -> Path:
    """Create the key file (0600, exclusive) and `PATH.pub`; returns the .pub path."""
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    seed = keys.signing_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    doc = {
        "chatarchief_key_file": KEY_FILE_VERSION,
        "log_id": keys.log_id.hex(),
        "kek": base64.b64encode(keys.kek).decode("ascii"),
        "signing_key": base64.b64encode(seed).decode("ascii"),
        "note": "Chatarchief secrets. Keep mode 0600, outside the data dir, and a copy in escrow.",
    }
    pub = public_path(path)
    if pub.exists():
        raise KeyFileError(f"{pub} already exists; refusing to overwrite")
    write_exclusive(path, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n", 0o600)
    write_exclusive(pub, (keys.vkey() + "\n").encode("ascii"), 0o644)
    return pub


def public_path(key_file: Path) -> Path:
    return key_file.with_name(key_file.name + ".pub")


def load_public(path: Path) -> tuple[str, Ed25519PublicKey]:
    """Read a `.pub` verifier key file: (signer name, public key)."""
    try:
        text = path.read_text("ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"public key file {path} cannot be read: {exc}") from None
    if text.startswith("{"):  # never echo it: this is what a key file (secrets) looks like
        raise KeyFileError(f"{path} is not a public key file (it looks like the private key file); pass its .pub")
    try:
        return checkpoint.parse_vkey(text)
    except checkpoint.CheckpointError:  # the reason quotes the text: a wrong file may hold secrets
        raise KeyFileError(
            f"public key file {path} is malformed: expected one line name+keyid+base64 (the .pub init wrote)"
        ) from None


def write_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Create-exclusive durable write; refusals become one-line KeyFileErrors."""
    try:
        durable.write_exclusive(path, data, mode)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
