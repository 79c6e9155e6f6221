"""The bot's saved Matrix session (`session.json` in the store dir), token encrypted at rest.

Contract:
- `save_session(store_dir, session, key)` atomically replaces `session.json`
  (mode 0600, fsync, rename). Homeserver, user id and device id are stored in
  clear (they are not secret, and operators need them); the access token only
  sealed with AES-256-GCM under a key derived (HKDF-SHA256) from `key`, the
  store's pickle key, which comes from our key material. The associated data
  binds the token to homeserver, user and device, so the fields cannot be
  swapped between files.
- `load_session(store_dir, key)` returns the session, or None when there is
  none. A file written before tokens were encrypted (a clear `access_token`) is
  read once and rewritten sealed. A token that does not open (another key file,
  a damaged or edited file) raises `SessionFileError` naming the file and the fix.
- `load_identity(store_dir)` reads only the clear fields (no key needed).
No file in the store dir holds the access token in clear after a load or save.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bridge.durable import write_atomic
from bridge.errors import SourceError

log = logging.getLogger(__name__)

SESSION_FILE = "session.json"
FORMAT_VERSION = 2
_NONCE = 12
_INFO = b"chatarchief/v1/matrix-session-token"


class SessionFileError(SourceError):
    """session.json cannot be read or its token does not open under this key material."""


@dataclass(frozen=True, slots=True)
class SessionIdentity:
    homeserver: str
    user_id: str
    device_id: str


@dataclass(frozen=True, slots=True)
class SavedSession:
    homeserver: str
    user_id: str
    device_id: str
    access_token: str

    def __repr__(self) -> str:
        return f"SavedSession({self.homeserver!r}, {self.user_id!r}, {self.device_id!r}, access_token=<hidden>)"


def _token_key(key: bytes) -> bytes:
    if not key:
        raise ValueError("the session key must come from the key material; an empty key is refused")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(key)


def _ad(homeserver: str, user_id: str, device_id: str) -> bytes:
    return "\x00".join((homeserver, user_id, device_id)).encode("utf-8")


def _read(store_dir: Path) -> dict[str, Any] | None:
    path = store_dir / SESSION_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SessionFileError(f"{path} cannot be read ({exc}); remove it to log in again as a new device") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("homeserver", "user_id")):
        raise SessionFileError(f"{path} is not a session file; remove it to log in again as a new device")
    return data


def load_identity(store_dir: Path) -> SessionIdentity | None:
    """Homeserver, user and device of the saved session (no key needed)."""
    data = _read(store_dir)
    if data is None:
        return None
    return SessionIdentity(data["homeserver"], data["user_id"], str(data["device_id"]))


def load_session(store_dir: Path, key: bytes) -> SavedSession | None:
    """The saved session with its token opened (see module docstring)."""
    data = _read(store_dir)
    if data is None:
        return None
    path = store_dir / SESSION_FILE
    homeserver, user_id, device_id = data["homeserver"], data["user_id"], str(data["device_id"])
    legacy = data.get("access_token")
    if isinstance(legacy, str):
        session = SavedSession(homeserver, user_id, device_id, legacy)
        save_session(store_dir, session, key)
        log.info("encrypted the access token", extra={"path": str(path)})
        return session
    try:
        sealed = base64.b64decode(data["access_token_sealed"], validate=True)
        token = AESGCM(_token_key(key)).decrypt(sealed[:_NONCE], sealed[_NONCE:], _ad(homeserver, user_id, device_id))
        return SavedSession(homeserver, user_id, device_id, token.decode("utf-8"))
    except (KeyError, TypeError, ValueError, InvalidTag):
        raise SessionFileError(
            f"the access token in {path} does not open with this key file (another key file, or the file was"
            " altered); use the key file the store was made with, or remove the file to log in as a new device"
        ) from None


def save_session(store_dir: Path, session: SavedSession, key: bytes) -> None:
    """Atomically replace session.json with the token sealed (see module docstring)."""
    store_dir.mkdir(parents=True, exist_ok=True)
    nonce = os.urandom(_NONCE)
    ad = _ad(session.homeserver, session.user_id, session.device_id)
    sealed = nonce + AESGCM(_token_key(key)).encrypt(nonce, session.access_token.encode("utf-8"), ad)
    doc = {
        "v": FORMAT_VERSION,
        "homeserver": session.homeserver,
        "user_id": session.user_id,
        "device_id": session.device_id,
        "access_token_sealed": base64.b64encode(sealed).decode("ascii"),
    }
    write_atomic(store_dir / SESSION_FILE, json.dumps(doc).encode("utf-8"))
