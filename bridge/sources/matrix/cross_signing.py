"""Cross-sign the bot's own device (matrix-nio has no cross-signing, matrix-nio#229).

Why: clients that exclude insecure devices (MSC4153, where Element is going)
share no room keys with a device its owner has not cross-signed, so an
unsigned archive bot silently stops receiving keys.

Contract: `ensure_cross_signed(client, store_dir, secret, password)` makes the
bot's current device carry a signature by the account's self-signing key:
- first run: generate master / self-signing / user-signing Ed25519 keys
  (`cryptography`), upload them (`/keys/device_signing/upload`; no UIA on a first
  upload where the server implements MSC3967, else UIA with the bot's password),
  and keep the private keys in `cross_signing.bin`, AES-256-GCM under a key
  derived (HKDF) from `secret` (our key material);
- every run: if the device lacks the self-signing signature (e.g. a new
  device after a re-login), sign its device keys (`/keys/signatures/upload`).
If the account already has a master key we do not hold, nothing is replaced
(that would break every official's trust in the account): it is logged and
`CrossSigningError` is raised; callers treat failure as a warning, not fatal.

Signatures are Ed25519 over Matrix canonical JSON (sorted keys, no whitespace,
UTF-8, without `signatures` and `unsigned`), unpadded base64.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bridge.durable import write_atomic
from bridge.errors import SourceError
from bridge.sources.matrix.client import MatrixUnavailableError

log = logging.getLogger(__name__)

KEYS_FILE = "cross_signing.bin"
_USAGES = ("master", "self_signing", "user_signing")
_API = "/_matrix/client/v3"


class CrossSigningError(SourceError):
    """The device could not be cross-signed (the source keeps running without it)."""


def unpadded_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def canonical_json(value: Any) -> bytes:
    """Matrix canonical JSON (https://spec.matrix.org/latest/appendices/#canonical-json)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def public_key(private: Ed25519PrivateKey) -> str:
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return unpadded_b64(raw)


def sign_json(obj: dict[str, Any], user_id: str, private: Ed25519PrivateKey) -> dict[str, Any]:
    """`obj` with an added signature by `private` under `ed25519:<public key>`."""
    unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    signature = unpadded_b64(private.sign(canonical_json(unsigned)))
    signatures = {user: dict(sigs) for user, sigs in obj.get("signatures", {}).items()}
    signatures.setdefault(user_id, {})[f"ed25519:{public_key(private)}"] = signature
    return {**obj, "signatures": signatures}


def cross_signing_key(user_id: str, usage: str, private: Ed25519PrivateKey) -> dict[str, Any]:
    pub = public_key(private)
    return {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{pub}": pub}}


# -- private keys at rest -------------------------------------------------------


def _wrapping_key(secret: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"chatarchief matrix cross-signing").derive(
        secret
    )


def save_keys(path: Path, secret: bytes, keys: dict[str, Ed25519PrivateKey]) -> None:
    plain = canonical_json(
        {
            usage: unpadded_b64(
                key.private_bytes(
                    serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
                )
            )
            for usage, key in keys.items()
        }
    )
    nonce = os.urandom(12)
    blob = nonce + AESGCM(_wrapping_key(secret)).encrypt(nonce, plain, b"cross-signing v1")
    write_atomic(path, blob)


def load_keys(path: Path, secret: bytes) -> dict[str, Ed25519PrivateKey]:
    blob = path.read_bytes()
    plain = AESGCM(_wrapping_key(secret)).decrypt(blob[:12], blob[12:], b"cross-signing v1")
    seeds = json.loads(plain)
    return {
        usage: Ed25519PrivateKey.from_private_bytes(base64.b64decode(seeds[usage] + "=" * (-len(seeds[usage]) % 4)))
        for usage in _USAGES
    }


# -- homeserver calls -----------------------------------------------------------


async def _post(client: Any, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    session: aiohttp.ClientSession = client.client_session
    headers = {"Authorization": f"Bearer {client.access_token}"}
    try:
        async with session.post(f"{client.homeserver}{_API}{path}", json=body, headers=headers) as resp:
            data = await resp.json(content_type=None)
            return resp.status, data if isinstance(data, dict) else {}
    except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
        raise MatrixUnavailableError(f"{path}: homeserver unreachable ({type(exc).__name__})") from exc


async def _own_keys(client: Any) -> dict[str, Any]:
    status, data = await _post(client, "/keys/query", {"device_keys": {client.user_id: []}})
    if status != 200:
        raise CrossSigningError(f"keys query refused: HTTP {status} {data.get('errcode')}")
    return data


async def _upload_keys(client: Any, keys: dict[str, Ed25519PrivateKey], password: str | None) -> None:
    user = client.user_id
    body: dict[str, Any] = {
        "master_key": cross_signing_key(user, "master", keys["master"]),
        "self_signing_key": sign_json(
            cross_signing_key(user, "self_signing", keys["self_signing"]), user, keys["master"]
        ),
        "user_signing_key": sign_json(
            cross_signing_key(user, "user_signing", keys["user_signing"]), user, keys["master"]
        ),
    }
    status, data = await _post(client, "/keys/device_signing/upload", body)
    if status == 401 and password is not None and "session" in data:
        body["auth"] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
            "session": data["session"],
        }
        status, data = await _post(client, "/keys/device_signing/upload", body)
    if status != 200:
        raise CrossSigningError(f"cross-signing key upload refused: HTTP {status} {data.get('errcode')}")


async def _sign_device(client: Any, keys: dict[str, Ed25519PrivateKey], device: dict[str, Any]) -> None:
    signed = sign_json(device, client.user_id, keys["self_signing"])
    status, data = await _post(client, "/keys/signatures/upload", {client.user_id: {client.device_id: signed}})
    failures = data.get("failures") or {}
    if status != 200 or failures:
        raise CrossSigningError(f"device signature refused: HTTP {status} {sorted(failures)}")


async def ensure_cross_signed(client: Any, store_dir: Path, secret: bytes, password: str | None) -> None:
    """Make the current device cross-signed (see module docstring); idempotent."""
    path = store_dir / KEYS_FILE
    user, device_id = client.user_id, client.device_id
    server = await _own_keys(client)
    server_master = (server.get("master_keys") or {}).get(user)
    if path.exists():
        keys = load_keys(path, secret)
    elif server_master is not None:
        raise CrossSigningError("account already has cross-signing keys this bot does not hold; not replacing them")
    else:
        keys = {usage: Ed25519PrivateKey.generate() for usage in _USAGES}
        save_keys(path, secret, keys)  # before the upload: never publish keys we could lose
    if server_master is None:
        await _upload_keys(client, keys, password)
        log.info("uploaded cross-signing keys", extra={"user_id": user})
        server = await _own_keys(client)
        server_master = (server.get("master_keys") or {}).get(user)
    ours = f"ed25519:{public_key(keys['master'])}"
    if server_master is None or ours not in (server_master.get("keys") or {}):
        raise CrossSigningError("the account's master key on the server is not ours")
    device = ((server.get("device_keys") or {}).get(user) or {}).get(device_id)
    if device is None:
        raise CrossSigningError(f"device {device_id} has no keys on the server yet")
    self_signing = f"ed25519:{public_key(keys['self_signing'])}"
    if self_signing in ((device.get("signatures") or {}).get(user) or {}):
        return
    await _sign_device(client, keys, device)
    log.info("cross-signed device", extra={"device_id": device_id, "user_id": user})
