"""matrix-nio, made strict: checked calls, raw response bodies, and a persistent login.

Contract:
- `checked(call, what)` awaits a nio call and returns its response, or raises:
  nio returns `ErrorResponse` objects instead of raising, and a `SyncError`
  taken for success makes a bot spin (STYLE principle 7). Unreachable servers
  raise `MatrixUnavailableError`; refusals raise `MatrixRequestError` with the
  Matrix errcode; a refused login raises `MatrixLoginError` (not retried).
- `RawKeepingClient` is nio's `AsyncClient` that also keeps the JSON body of
  sync and /messages responses as `response.raw_body`: the archive stores
  events exactly as the server sent them, not nio's lossy parse. nio is still
  what decrypts (it replaces `MegolmEvent`s in its own parse, keyed by event id).
- It also drops other devices' display names from /keys/query responses before
  nio stores them: nio keeps them in plaintext in its crypto store, the bot does
  not need them, and officials name their devices freely (no plaintext at rest).
- It keeps nio's crypto store crash-safe where nio is not (a kill at either
  point loses room keys for good; tests/test_matrix_crash_windows.py):
  one-time keys are saved before they are uploaded (nio saves the account
  only after the server answered: killed in between, the server hands out
  keys whose private halves are gone, and the restarted device's new keys
  reuse the same key ids, which the server refuses), and each sync response is
  taken into the store in one SQLite transaction (nio writes the account,
  Olm session and Megolm session of one to-device room key separately: killed
  in between, the replayed sync cannot decrypt it again). A replayed sync
  after a committed transaction only finds Olm messages already used, which
  nio logs and skips: their room keys are already stored.
- `open_session(client, ...)` logs in once and persists `device_id` and the
  access token (`session.json` in the store dir, the token sealed under
  `session_key`: see `session`) so every restart is the same device with
  the same crypto store. With an access-token file the
  token is the operator's (SSO deployments such as MijnBureau disable passwords):
  whoami tells us the user and device.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from nio import (
    Api,
    AsyncClient,
    ErrorResponse,
    KeysQueryResponse,
    KeysUploadError,
    KeysUploadResponse,
    Response,
    RoomMessagesResponse,
    SyncResponse,
)
from nio.store import DefaultStore

from bridge.errors import SourceError
from bridge.sources.matrix.session import SavedSession, SessionFileError, load_session, save_session
from bridge.sources.matrix.timing import SyncTimer
from bridge.sources.offload import off_loop

log = logging.getLogger(__name__)


class MatrixUnavailableError(SourceError):
    """The homeserver could not be reached (retry with backoff)."""


class MatrixRequestError(SourceError):
    """The homeserver refused a request; carries the Matrix errcode."""

    def __init__(self, what: str, errcode: str | None, message: str | None) -> None:
        self.what = what
        self.errcode = errcode
        super().__init__(f"{what} refused by homeserver: {errcode or 'error'}: {message or ''}".rstrip())


class MatrixLoginError(SourceError):
    """Credentials are wrong or revoked: retrying cannot help, the operator must act."""


def why_unreachable(exc: BaseException) -> str:
    """What an operator can act on: "connection refused", "timed out", "name not resolved"… not a class name."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, aiohttp.ClientConnectorError):
            seen = seen.os_error
        if isinstance(seen, ConnectionRefusedError) or getattr(seen, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(seen, TimeoutError | aiohttp.ServerTimeoutError):
            return "timed out"
        if isinstance(seen, socket.gaierror):
            return "host name not resolved"
        if isinstance(seen, OSError) and seen.strerror:
            return str(seen.strerror).lower()
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


async def checked(call: Awaitable[Any], what: str) -> Any:
    """Await a nio call; return its response or raise (see module docstring)."""
    try:
        response = await call
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise MatrixUnavailableError(f"{what}: homeserver unreachable ({why_unreachable(exc)})") from exc
    if isinstance(response, ErrorResponse):
        raise MatrixRequestError(what, response.status_code, response.message)
    return response


class LeanStore(DefaultStore):  # type: ignore[misc]  # nio is untyped
    """nio's crypto store without its write-per-sync: nio hands every sync's encrypted rooms to
    `save_encrypted_rooms`, which binds the store's ~40 models and runs an INSERT OR IGNORE each time (a few ms per
    sync on the live path, the largest part of nio's share: bench/capture.py). Rooms this store already holds are
    skipped; new ones are saved as before, in the sync's transaction. `_held` is what was loaded or saved by this
    store object: after a failed sync (transaction rolled back) the source reconnects with a new client and store,
    which loads it again from disk.
    """

    _held: set[str] | None = None

    def load_encrypted_rooms(self) -> set[str]:
        rooms: set[str] = super().load_encrypted_rooms()
        self._held = set(rooms)
        return rooms

    def save_encrypted_rooms(self, rooms: Any) -> None:
        held = self._held
        new = list(rooms) if held is None else [r for r in rooms if r not in held]
        if new:
            super().save_encrypted_rooms(new)
            if held is not None:
                held.update(new)

    def delete_encrypted_room(self, room: str) -> None:
        super().delete_encrypted_room(room)
        if self._held is not None:
            self._held.discard(room)


class RawKeepingClient(AsyncClient):  # type: ignore[misc]  # nio is untyped
    """nio's client that also keeps the raw JSON of sync and /messages responses."""

    #: Debug timing of the sync in flight (`timing`; None unless the bench asks for it).
    timer: SyncTimer | None = None

    async def send(self, *args: Any, **kwargs: Any) -> aiohttp.ClientResponse:
        response: aiohttp.ClientResponse = await super().send(*args, **kwargs)
        if self.timer is not None:
            self.timer.mark("http")
        return response

    async def create_matrix_response(
        self,
        response_class: type,
        transport_response: aiohttp.ClientResponse,
        data: tuple[Any, ...] | None = None,
        save_to: os.PathLike[str] | None = None,
    ) -> Any:
        response = await super().create_matrix_response(response_class, transport_response, data, save_to)
        if response_class in (SyncResponse, RoomMessagesResponse) and not isinstance(response, ErrorResponse):
            # aiohttp caches the body nio already read: this re-parses, it does not re-fetch
            # (off the loop when large: a full-state sync of many rooms runs to megabytes).
            body = await transport_response.read()
            response.raw_body = await off_loop(len(body), orjson.loads, body)
            if self.timer is not None:
                self.timer.mark("parsed")
        if response_class is KeysQueryResponse and not isinstance(response, ErrorResponse):
            _drop_display_names(response.device_keys)
        return response

    async def keys_upload(self) -> KeysUploadResponse | KeysUploadError:
        """nio's upload, with the account (new one-time keys included) saved before the keys leave.

        A device restarted after a kill mid-upload holds the same unpublished keys and uploads them
        again (the server accepts an identical key twice) along with any new ones.
        """
        if self.olm is None or not self.should_upload_keys:
            return await super().keys_upload()  # nio's own refusal (no store, nothing to upload)
        content = self.olm.share_keys()
        self.olm.save_account()
        method, path, data = Api.keys_upload(self.access_token, content)
        response: KeysUploadResponse | KeysUploadError = await self._send(KeysUploadResponse, method, path, data)
        return response

    async def receive_response(self, response: Response) -> None:
        """nio's handling; a sync response's crypto-store writes commit together or not at all."""
        store = self.store
        if not isinstance(response, SyncResponse) or store is None:
            await super().receive_response(response)
            return
        with store.database.atomic():
            await super().receive_response(response)
        if self.timer is not None:
            self.timer.mark("received")


def _drop_display_names(device_keys: Any) -> None:
    """Remove `unsigned.device_display_name` (outside the signed part) from a /keys/query answer."""
    if not isinstance(device_keys, dict):
        return
    for devices in device_keys.values():
        for payload in (devices or {}).values() if isinstance(devices, dict) else ():
            unsigned = payload.get("unsigned") if isinstance(payload, dict) else None
            if isinstance(unsigned, dict):
                unsigned.pop("device_display_name", None)


def _read_secret(path: Path, what: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise MatrixLoginError(f"cannot read matrix {what} file {path}: {exc.strerror}") from exc
    if not value:
        raise MatrixLoginError(f"matrix {what} file {path} is empty")
    return value


async def _whoami(client: AsyncClient) -> tuple[str, str]:
    try:
        who = await checked(client.whoami(), "whoami")
    except MatrixRequestError as exc:
        if exc.errcode in ("M_UNKNOWN_TOKEN", "M_MISSING_TOKEN", "M_FORBIDDEN"):
            raise MatrixLoginError(f"access token refused by homeserver ({exc.errcode})") from exc
        raise
    if not who.device_id:
        raise MatrixLoginError("whoami returned no device id: the access token must belong to a device")
    return str(who.user_id), str(who.device_id)


async def open_session(
    client: AsyncClient,
    *,
    homeserver: str,
    store_dir: Path,
    user_id: str | None,
    password_file: Path | None,
    access_token_file: Path | None,
    device_name: str,
    session_key: bytes,
) -> None:
    """Log `client` in (restoring the saved device where possible) and load its crypto store."""
    store = _SessionStore(store_dir, session_key)
    if access_token_file is not None:
        await _login_with_token(client, homeserver, store, user_id, access_token_file)
        return
    saved = store.load()
    if saved is not None and saved.homeserver == homeserver and saved.user_id == (user_id or saved.user_id):
        client.access_token = saved.access_token
        try:
            await _whoami(client)
        except MatrixLoginError:
            log.warning("saved matrix access token refused; logging in again as the same device")
        else:
            client.restore_login(saved.user_id, saved.device_id, saved.access_token)
            return
        client.device_id = saved.device_id  # nio's login reuses it: same device, same keys
    if password_file is None or user_id is None:
        raise MatrixLoginError("matrix login needs user_id and password_file, or access_token_file")
    await _login_with_password(client, homeserver, store, user_id, password_file, device_name)


@dataclass(frozen=True, slots=True)
class _SessionStore:
    """session.json with its key; a file that will not open is a login problem the operator must fix."""

    store_dir: Path
    key: bytes

    def load(self) -> SavedSession | None:
        try:
            return load_session(self.store_dir, self.key)
        except SessionFileError as exc:
            raise MatrixLoginError(str(exc)) from exc

    def save(self, session: SavedSession) -> None:
        save_session(self.store_dir, session, self.key)


async def _login_with_token(
    client: AsyncClient, homeserver: str, store: _SessionStore, user_id: str | None, token_file: Path
) -> None:
    token = _read_secret(token_file, "access token")
    client.access_token = token
    who_user, who_device = await _whoami(client)
    if user_id is not None and who_user != user_id:
        raise MatrixLoginError(f"access token belongs to {who_user}, config says {user_id}")
    saved = store.load()
    if saved is not None and saved.device_id != who_device:
        # A new token for a new device: the old crypto store cannot decrypt for it.
        log.warning(
            "access token is for another device than the store",
            extra={"device_id": who_device, "stored_device_id": saved.device_id},
        )
    client.user = who_user
    client.restore_login(who_user, who_device, token)
    store.save(SavedSession(homeserver, who_user, who_device, token))


async def _login_with_password(
    client: AsyncClient, homeserver: str, store: _SessionStore, user_id: str, password_file: Path, device_name: str
) -> None:
    password = _read_secret(password_file, "password")
    client.user = user_id
    try:
        response = await checked(client.login(password=password, device_name=device_name), "login")
    except MatrixRequestError as exc:
        if exc.errcode in ("M_FORBIDDEN", "M_USER_DEACTIVATED", "M_INVALID_PARAM", "M_UNKNOWN"):
            raise MatrixLoginError(f"matrix login as {user_id} refused ({exc.errcode})") from exc
        raise
    store.save(SavedSession(homeserver, response.user_id, response.device_id, response.access_token))
    log.info("logged in to matrix", extra={"user_id": response.user_id, "device_id": response.device_id})


async def close_quietly(client: AsyncClient) -> None:
    """Close nio's HTTP session; never raise from cleanup."""
    try:
        await client.close()
    except (aiohttp.ClientError, OSError):  # pragma: no cover - best effort
        log.debug("error closing matrix client", exc_info=True)


async def fetch_event(
    client: AsyncClient, room_id: str, event_id: str, params: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """`GET /rooms/{room}/event/{event}`: the event JSON, or None when the server does not give it (not an error:
    callers decide); an unreachable server raises `MatrixUnavailableError` (the batch is retried)."""
    session: aiohttp.ClientSession = client.client_session
    url = f"{client.homeserver}/_matrix/client/v3/rooms/{quote(room_id, safe='')}/event/{quote(event_id, safe='')}"
    headers = {"Authorization": f"Bearer {client.access_token}"}
    try:
        async with session.get(url, params=params or {}, headers=headers) as resp:
            if resp.status != 200:
                log.info("event not available", extra={"event_id": event_id, "status": resp.status})
                return None
            data = await resp.json(content_type=None)
    except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
        raise MatrixUnavailableError(f"event fetch: homeserver unreachable ({why_unreachable(exc)})") from exc
    return data if isinstance(data, dict) else None
