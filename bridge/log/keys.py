"""The key file: the secrets that live outside the data dir.

A key file holds the key-encryption key (KEK, which wraps the data keys stored in
the data dir). It is JSON, written once with mode 0600 by `init` (create-exclusive,
fsynced), and refused whenever it is readable or writable by group or others.
Beside it `init` writes `PATH.pub`: the signing key in signed-note verifier-key
form, the only thing an auditor needs to check checkpoints and packages.

The Ed25519 checkpoint signing key lives in its own 0600 file (version 2, since
issue 13; default `PATH.signing`, `init --signing-key`, `storage.signing_key_file`)
in golang.org/x/mod/sumdb/note's private-key form
`PRIVATE+KEY+<name>+<key id>+base64(0x01 || seed)`, so reading the archive (the
KEK) and vouching for it (the signing key) are two powers that can be held apart.
A version-2 key file records the public key; without the signing key file the
material reads and verifies but refuses to sign (`KeyFileError`, exit 2).
Version 1 key files (KEK and signing key in one file) still load;
`chatarchief migrate-signing-key` moves the signing key out (`migrate_signing_key`).

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

KEY_FILE_VERSION = 1  # KEK and signing key in one file (before issue 13)
SPLIT_KEY_FILE_VERSION = 2  # KEK and public key; the signing key in its own file
SIGNING_SUFFIX = ".signing"
PRIVATE_PREFIX = "PRIVATE+KEY+"


@dataclass(frozen=True)
class KeyMaterial:
    """The secrets from a key file (and signing key file). `repr` never shows them.

    `signer` is None when only the key file was loaded (a version-2 key file without its signing key file):
    everything reads and verifies, and `signing_key` refuses with a KeyFileError naming the fix.
    """

    log_id: bytes
    kek: bytes
    verifier: Ed25519PublicKey
    signer: Ed25519PrivateKey | None = None

    def __repr__(self) -> str:
        return f"KeyMaterial(log_id={self.log_id.hex()}, secrets=<hidden>)"

    @property
    def key_name(self) -> str:
        return key_name_for(self.log_id)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.verifier

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        if self.signer is None:
            raise KeyFileError(
                "this signs a checkpoint, and the signing key is not loaded: put the signing key file beside the"
                " key file (KEY_FILE.signing) or set storage.signing_key_file"
            )
        return self.signer

    def without_signer(self) -> KeyMaterial:
        return KeyMaterial(self.log_id, self.kek, self.verifier, None)

    def with_signer(self, signer: Ed25519PrivateKey) -> KeyMaterial:
        """The same log and KEK signing with `signer` (a rotated signing key; `verifier` stays the pinned one)."""
        return KeyMaterial(self.log_id, self.kek, self.verifier, signer)

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
    signer = Ed25519PrivateKey.generate()
    return KeyMaterial(log_id=log_id, kek=crypto.random_key(), verifier=signer.public_key(), signer=signer)


def signing_path(key_file: Path) -> Path:
    """Where the signing key lives by default: beside the key file, `KEY_FILE.signing`."""
    return key_file.with_name(key_file.name + SIGNING_SUFFIX)


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


def _read_doc(path: Path) -> dict[str, object]:
    check_permissions(path)
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise KeyFileError(f"key file {path} cannot be read as a Chatarchief key file: {exc}") from None
    if not isinstance(doc, dict) or doc.get("chatarchief_key_file") not in (KEY_FILE_VERSION, SPLIT_KEY_FILE_VERSION):
        raise KeyFileError(f"key file {path} is malformed (not a version-1 or -2 Chatarchief key file)")
    return doc


def load(path: Path, signing_key_file: Path | None = None) -> KeyMaterial:
    """The key material: a version-1 key file alone, or a version-2 key file and its signing key file
    (`signing_key_file`, default `KEY_FILE.signing`; when absent, material that cannot sign)."""
    doc = _read_doc(path)
    try:
        log_id = bytes.fromhex(str(doc["log_id"]))
        kek = base64.b64decode(str(doc["kek"]), validate=True)
        if len(kek) != crypto.KEY_BYTES or len(log_id) != 16:
            raise ValueError("wrong key length")
        if doc["chatarchief_key_file"] == KEY_FILE_VERSION:
            seed = base64.b64decode(str(doc["signing_key"]), validate=True)
            if len(seed) != 32:
                raise ValueError("wrong key length")
            signer = Ed25519PrivateKey.from_private_bytes(seed)
            return KeyMaterial(log_id, kek, signer.public_key(), signer)
        name, verifier = checkpoint.parse_vkey(str(doc["public_key"]))
        if name != key_name_for(log_id):
            raise ValueError(f"public key is for {name}, not this log")
    except (KeyError, ValueError, TypeError, binascii.Error) as exc:
        raise KeyFileError(f"key file {path} is malformed ({exc}); restore it from escrow") from None
    material = KeyMaterial(log_id, kek, verifier, None)
    spath = signing_key_file or signing_path(path)
    if signing_key_file is None and not spath.exists():
        return material  # reads and verifies; refuses to sign
    signer = load_signing_key(spath, material)
    return KeyMaterial(log_id, kek, verifier, signer)


def load_signing_key(path: Path, material: KeyMaterial) -> Ed25519PrivateKey:
    """The signing key file of `material`'s log (0600; its public key must be the log's)."""
    check_permissions(path, "signing key file")
    try:
        text = path.read_text("ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"signing key file {path} cannot be read: {exc}") from None
    parts = text[len(PRIVATE_PREFIX) :].split("+", 2) if text.startswith(PRIVATE_PREFIX) else []
    try:
        blob = base64.b64decode(parts[2], validate=True) if len(parts) == 3 else b""
        if len(blob) != 33 or blob[0] != checkpoint.ALG_ED25519:
            raise ValueError("not PRIVATE+KEY+<name>+<id>+base64(0x01 || seed)")
        signer = Ed25519PrivateKey.from_private_bytes(blob[1:])
    except (ValueError, binascii.Error) as exc:
        raise KeyFileError(f"signing key file {path} is malformed ({exc}); restore it from escrow") from None
    if parts[0] != material.key_name:
        raise KeyFileError(f"signing key file {path} belongs to another log or key than the key file")
    # Another key of this log is a rotated signing key (`rotate-signing-key`): the log's writer checks it is
    # the current one of the log's key chain before it signs anything (`bridge.log.rotation`).
    return signer


def _signing_text(keys: KeyMaterial) -> bytes:
    return _private_text(keys.key_name, keys.signing_key)


def _private_text(name: str, private: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    seed = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    kid = checkpoint.key_id(name, private.public_key()).hex()
    body = base64.b64encode(bytes([checkpoint.ALG_ED25519]) + seed).decode("ascii")
    return f"{PRIVATE_PREFIX}{name}+{kid}+{body}\n".encode("ascii")


def new_signing_key(path: Path, material: KeyMaterial) -> tuple[Ed25519PrivateKey, bool]:
    """The signing key in `path` (0600, of this log), or a fresh one written there (exclusive, fsynced) with
    its verifier key in `PATH.pub`: (key, created now). For `rotate-signing-key`."""
    if path.exists():
        return load_signing_key(path, material), False
    private = Ed25519PrivateKey.generate()
    pub = public_path(path)
    if pub.exists():
        raise KeyFileError(f"{pub} already exists without its signing key {path}; refusing to overwrite it")
    write_exclusive(path, _private_text(material.key_name, private), 0o600)
    vkey = checkpoint.format_vkey(material.key_name, private.public_key())
    write_exclusive(pub, (vkey + "\n").encode("ascii"), 0o644)
    return private, True


def _split_doc(keys: KeyMaterial) -> bytes:
    doc = {
        "chatarchief_key_file": SPLIT_KEY_FILE_VERSION,
        "log_id": keys.log_id.hex(),
        "kek": base64.b64encode(keys.kek).decode("ascii"),
        "public_key": keys.vkey(),
        "note": "Chatarchief key-encryption key (reads the archive). Keep mode 0600, outside the data dir, and a"
        " copy in escrow. The signing key is in its own file.",
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def write_new(path: Path, keys: KeyMaterial, signing_key_file: Path | None = None) -> Path:
    """Create the key file (0600, exclusive) and `PATH.pub`; returns the .pub path.

    With `signing_key_file`: a version-2 key file and the signing key in that file (0600, exclusive);
    without: a version-1 key file holding both (as before issue 13; tests and older tools).
    """
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    pub = public_path(path)
    if pub.exists():
        raise KeyFileError(f"{pub} already exists; refusing to overwrite")
    if signing_key_file is not None:
        write_exclusive(signing_key_file, _signing_text(keys), 0o600)
        write_exclusive(path, _split_doc(keys), 0o600)
    else:
        seed = keys.signing_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        doc = {
            "chatarchief_key_file": KEY_FILE_VERSION,
            "log_id": keys.log_id.hex(),
            "kek": base64.b64encode(keys.kek).decode("ascii"),
            "signing_key": base64.b64encode(seed).decode("ascii"),
            "note": "Chatarchief secrets. Keep mode 0600, outside the data dir, and a copy in escrow.",
        }
        write_exclusive(path, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n", 0o600)
    write_exclusive(pub, (keys.vkey() + "\n").encode("ascii"), 0o644)
    return pub


def migrate_signing_key(path: Path, signing_key_file: Path | None = None) -> tuple[Path, bool]:
    """Move a version-1 key file's signing key into its own file; returns (signing key file, migrated now).

    Crash-safe and idempotent: the signing key file is written (exclusive, fsynced) before the key file is
    atomically replaced by its version-2 form, so at every instant one of them holds the signing key; a rerun
    after a crash finds the signing key file, checks it is the same key, and finishes. A version-2 key file
    is left as it is (False).
    """
    spath = signing_key_file or signing_path(path)
    doc = _read_doc(path)
    if doc["chatarchief_key_file"] == SPLIT_KEY_FILE_VERSION:
        return spath, False
    keys = load(path)
    if spath.exists():
        load_signing_key(spath, keys)  # a leftover of an interrupted migration: must be this very key
    else:
        write_exclusive(spath, _signing_text(keys), 0o600)
    try:
        durable.write_atomic(path, _split_doc(keys), 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot rewrite {path}: {exc.strerror}") from None
    return spath, True


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
