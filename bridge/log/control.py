"""The running bot's control socket: other commands hand their log writes to it.

Theory of operation
-------------------
`chatarchief run` holds the data dir's writer lock (`bridge.log.lock`) for its
life, so no other process may open the log to write. Instead, `import`,
`withhold`, `rotate-key` and the month-end seal of `snapshot` connect to
`<data_dir>/control.sock` and ask the bot to do the write with its own
`LogStore`: the bot appends in its own batches, between its sources' batches, so
capture goes on.

Wire format: frames of a 4-byte big-endian length and a JSON object, at most
`MAX_FRAME` bytes. Requests are `{"id": n, "op": ..., ...}`; the answer is
`{"id": n, "ok": result}` or `{"id": n, "error": {"kind": k, "message": m}}`
with `k` one of `usage`, `integrity`, `storage`, `internal`, which the client
raises again as UsageError (exit 2), LogIntegrityError (exit 1) or
StorageError (exit 1). A client may pipeline requests (`import` keeps a few
batches in flight); the bot starts them in arrival order, at most `IN_FLIGHT`
per connection. The first request must be `hello`, naming the client's log id
and public key: a key file of another log is refused as it would be locally.

Who may connect: the socket is created 0600 in the data dir (itself private),
and each connection's peer uid (SO_PEERCRED) must be the bot's own; others are
refused (and logged, without anything they sent). Ops: hello, append (events
and decisions only: clear KEY/BLOB records are the store's own), checkpoint,
rotate_key, rotate_signing_key (the path of the new signing key file, which the bot loads
itself), seal_prefix. Payloads travel base64-encoded; nothing is logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson

from bridge.errors import ChatarchiefError, Check, LogIntegrityError, StorageError, UsageError
from bridge.log import keys as keyfile
from bridge.log.format import RecordType
from bridge.log.keys import KeyMaterial
from bridge.log.store import AppendResult, LogStore

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MAX_FRAME = 64 << 20
IN_FLIGHT = 4
#: Record types a client may ask the bot to append.
CLIENT_TYPES = frozenset({RecordType.EVENT, RecordType.DECISION})
#: Longest unix socket path the kernel accepts (sun_path is 108 bytes with the terminating NUL).
MAX_SOCKET_PATH = 107

Entry = tuple[RecordType, str, str, str, bytes]


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


# -- framing (pure) ---------------------------------------------------------------


def encode_frame(doc: dict[str, Any]) -> bytes:
    body = orjson.dumps(doc)
    if len(body) > MAX_FRAME:
        raise UsageError(f"a control request of {len(body)} bytes exceeds the limit of {MAX_FRAME} bytes")
    return struct.pack(">I", len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next frame's object; None at a clean end of stream. Raises ValueError for a bad frame."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ValueError("truncated frame header") from None
        return None
    (size,) = struct.unpack(">I", head)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes exceeds the limit of {MAX_FRAME}")
    try:
        body = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise ValueError("truncated frame") from None
    doc = orjson.loads(body)
    if not isinstance(doc, dict):
        raise ValueError("a frame must hold a JSON object")
    return doc


def encode_entries(entries: Sequence[Entry]) -> list[list[Any]]:
    return [[int(t), s, c, i, base64.b64encode(p).decode("ascii")] for t, s, c, i, p in entries]


def decode_entries(raw: Any) -> list[Entry]:
    if not isinstance(raw, list):
        raise UsageError("append: entries must be a list")
    entries: list[Entry] = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 5):
            raise UsageError("append: each entry is [type, source, conversation, id, payload]")
        rtype, source, conv, ident, payload = item
        if rtype not in {int(t) for t in CLIENT_TYPES}:
            raise UsageError(f"append: record type {rtype!r} cannot be appended through the control socket")
        if not all(isinstance(v, str) for v in (source, conv, ident, payload)):
            raise UsageError("append: source, conversation, id and payload must be strings")
        entries.append((RecordType(rtype), source, conv, ident, base64.b64decode(payload, validate=True)))
    return entries


def entry_size(entry: Entry) -> int:
    """Approximate bytes an entry takes in a frame (base64 payload plus the strings)."""
    return (len(entry[4]) * 4) // 3 + len(entry[1]) + len(entry[2]) + len(entry[3]) + 32


def peer_uid(sock: socket.socket) -> int:
    """The connecting process's uid, from the kernel (SO_PEERCRED: pid, uid, gid)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return int(uid)


def _error(exc: BaseException) -> dict[str, object]:
    if isinstance(exc, LogIntegrityError):
        return {"kind": "integrity", **exc.to_json(), "message": str(exc)}
    if isinstance(exc, UsageError):
        return {"kind": "usage", "message": str(exc)}
    if isinstance(exc, ChatarchiefError):
        return {"kind": "storage", "message": str(exc)}
    return {"kind": "internal", "message": f"internal error in the bot ({type(exc).__name__})"}


def _raise(error: Any) -> None:
    kind = error.get("kind") if isinstance(error, dict) else None
    message = str(error.get("message", "")) if isinstance(error, dict) else str(error)
    if kind == "integrity":
        raise _integrity(error)
    if kind == "usage":
        raise UsageError(message)
    raise StorageError(f"the running bot could not do it: {message}")


def _integrity(error: dict[str, Any]) -> LogIntegrityError:
    """The bot's integrity error rebuilt with its check and evidence (an older bot sends only a message)."""

    def text(key: str) -> str | None:
        v = error.get(key)
        return v if isinstance(v, str) else None

    try:
        check = Check(str(error.get("check")))
    except ValueError:
        check = Check.UNSPECIFIED
    seq = error.get("seq")
    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
    reason = text("reason") or str(error.get("message", ""))
    return LogIntegrityError(seq, reason, text("expected"), text("found"), check=check)


# -- server (inside `run`) -----------------------------------------------------------


class ControlServer:
    """Serves the control socket for `store` while in its `async with` block.

    The caller holds the writer lock (it opened `store`), so a socket file left
    by a dead bot is stale and removed. On exit: stop listening, let requests in
    hand finish (up to `drain_seconds`), then drop the connections.
    """

    def __init__(self, data_dir: Path, store: LogStore, *, uid: int | None = None, drain_seconds: float = 10.0) -> None:
        self._path = socket_path(data_dir)
        self._store = store
        self._uid = os.geteuid() if uid is None else uid
        self._drain = drain_seconds
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._requests: set[asyncio.Task[None]] = set()
        self.refused = 0

    @property
    def path(self) -> Path:
        return self._path

    async def __aenter__(self) -> Self:
        if len(os.fsencode(self._path)) > MAX_SOCKET_PATH:
            log.error(
                "ALERT control socket path too long; other commands cannot reach the bot (use a shorter data_dir)",
                extra={"path": str(self._path)},
            )
            return self
        self._path.unlink(missing_ok=True)  # we hold the writer lock: any socket here is a dead bot's
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self._path), limit=1 << 16)
        finally:
            os.umask(old)
        os.chmod(self._path, 0o600)
        log.info("control socket listening", extra={"path": str(self._path)})
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(OSError):
            self._path.unlink()
        if self._requests:
            await asyncio.wait(set(self._requests), timeout=self._drain)
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._connection(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        uid = peer_uid(sock) if sock is not None else -1
        send_lock = asyncio.Lock()

        async def send(doc: dict[str, Any]) -> None:
            async with send_lock:
                writer.write(encode_frame(doc))
                await writer.drain()

        if uid != self._uid:
            self.refused += 1
            log.warning("control socket: refused a connection from another user", extra={"peer_uid": uid})
            await send({"id": 0, "error": {"kind": "usage", "message": "refused: the bot serves only its own user"}})
            return
        greeted = False
        slots = asyncio.Semaphore(IN_FLIGHT)
        mine: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    request = await read_frame(reader)
                except ValueError as exc:
                    await send({"id": 0, "error": {"kind": "usage", "message": f"bad control frame: {exc}"}})
                    return
                if request is None:
                    return
                if not greeted:
                    greeted = await self._hello(request, send)
                    if not greeted:
                        return
                    continue
                await slots.acquire()
                task = asyncio.create_task(self._request(request, send))
                for group in (mine, self._requests):
                    group.add(task)
                    task.add_done_callback(group.discard)
                task.add_done_callback(lambda _: slots.release())
        finally:
            if mine:
                await asyncio.wait(set(mine), timeout=self._drain)

    async def _hello(self, request: dict[str, Any], send: Any) -> bool:
        keys = self._store.keys
        if request.get("op") != "hello":
            await send({"id": request.get("id", 0), "error": {"kind": "usage", "message": "say hello first"}})
            return False
        if request.get("log_id") != keys.log_id.hex() or request.get("public_key") != keys.vkey():
            message = "the key file belongs to another log than the one the running bot writes; check --key-file"
            await send({"id": request.get("id", 0), "error": {"kind": "usage", "message": message}})
            return False
        await send({"id": request.get("id", 0), "ok": {"pid": os.getpid(), "size": self._store.size}})
        return True

    async def _request(self, request: dict[str, Any], send: Any) -> None:
        rid = request.get("id", 0)
        try:
            result = await self._dispatch(request)
        except Exception as exc:  # every failure is an answer; the bot goes on
            if not isinstance(exc, ChatarchiefError):
                log.error("control request failed", extra={"op": str(request.get("op")), "error": type(exc).__name__})
            reply: dict[str, Any] = {"id": rid, "error": _error(exc)}
        else:
            reply = {"id": rid, "ok": result}
        with contextlib.suppress(ConnectionError):
            await send(reply)

    def _dispatch(self, request: dict[str, Any]) -> Any:
        """The op's coroutine. Synchronous up to the store call, so requests reach the store in arrival order."""
        op = request.get("op")
        store = self._store
        if op == "append":
            entries = decode_entries(request.get("entries"))
            return _append(store, entries)
        if op == "checkpoint":
            return store.checkpoint()
        if op == "rotate_key":
            log.info("control socket: rotating the data key")
            return store.rotate_data_key()
        if op == "rotate_signing_key":
            return _rotate_signing_key(store, request.get("key_file"))
        if op == "seal_prefix":
            size = request.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise UsageError("seal_prefix: size must be a non-negative integer")
            return store.seal_prefix(size)
        raise UsageError(f"unknown control op {op!r}")


async def _rotate_signing_key(store: LogStore, key_file: object) -> dict[str, Any]:
    """The bot loads the new signing key from its file itself (the key never travels over the socket)."""
    if not isinstance(key_file, str) or not key_file:
        raise UsageError("rotate_signing_key: key_file must be a path")
    log.info("control socket: rotating the signing key")
    new = keyfile.load_signing_key(Path(key_file), store.keys)
    seq, vkey = await store.rotate_signing_key(new)
    return {"seq": seq, "vkey": vkey}


async def _append(store: LogStore, entries: list[Entry]) -> dict[str, Any]:
    result = await store.append_records(entries)
    return {"appended": result.appended, "duplicates": result.duplicates, "seqs": list(result.seqs)}


# -- client (the other commands) ----------------------------------------------------


class ControlClient:
    """One connection to the running bot. Use `async with await ControlClient.connect(...)`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._next = 1
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._send_lock = asyncio.Lock()
        self._pump = asyncio.create_task(self._receive())
        self.bot_pid: int | None = None

    @classmethod
    async def connect(cls, data_dir: Path, keys: KeyMaterial) -> ControlClient:
        """Connect and say hello. Raises OSError when no bot listens; UsageError when the bot refuses us."""
        reader, writer = await asyncio.open_unix_connection(str(socket_path(data_dir)), limit=1 << 16)
        client = cls(reader, writer)
        try:
            hello = await client.call("hello", log_id=keys.log_id.hex(), public_key=keys.vkey())
        except BaseException:
            await client.close()
            raise
        client.bot_pid = int(hello["pid"])
        return client

    async def _receive(self) -> None:
        failure: BaseException
        try:
            while True:
                doc = await read_frame(self._reader)
                if doc is None:
                    break
                rid = doc.get("id")
                future = self._waiting.pop(rid, None) if isinstance(rid, int) else None
                if future is None and rid == 0 and self._waiting:  # a connection-level refusal
                    future = self._waiting.pop(next(iter(self._waiting)))
                if future is None or future.done():
                    continue
                if "error" in doc:
                    try:
                        _raise(doc["error"])
                    except ChatarchiefError as exc:
                        future.set_exception(exc)
                else:
                    future.set_result(doc.get("ok"))
            failure = StorageError(
                "the running bot closed the control connection (it is stopping?); run the command again"
                " (events already stored are skipped)"
            )
        except (ValueError, ConnectionError) as exc:
            failure = StorageError(f"the control connection to the running bot failed: {exc}")
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(failure)
        self._waiting.clear()

    async def call(self, op: str, **args: Any) -> Any:
        rid = self._next
        self._next += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._pump.done():
            raise StorageError("the control connection to the running bot is closed; run the command again")
        self._waiting[rid] = future
        frame = encode_frame({"id": rid, "op": op, **args})
        try:
            async with self._send_lock:
                self._writer.write(frame)
                await self._writer.drain()
        except ConnectionError as exc:
            self._waiting.pop(rid, None)
            raise StorageError(f"the control connection to the running bot failed: {exc}") from None
        return await future

    async def append_records(self, entries: Sequence[Entry]) -> AppendResult:
        """Append through the bot, in requests below MAX_FRAME; one entry per request when it is big."""
        appended = duplicates = 0
        seqs: list[int] = []
        for chunk in _chunks(entries, MAX_FRAME // 2):
            reply = await self.call("append", entries=encode_entries(chunk))
            appended += int(reply["appended"])
            duplicates += int(reply["duplicates"])
            seqs.extend(int(s) for s in reply["seqs"])
        return AppendResult(appended, duplicates, tuple(seqs))

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _chunks(entries: Sequence[Entry], budget: int) -> list[list[Entry]]:
    chunks: list[list[Entry]] = []
    current: list[Entry] = []
    used = 0
    for entry in entries:
        size = entry_size(entry)
        if current and used + size > budget:
            chunks.append(current)
            current, used = [], 0
        current.append(entry)
        used += size
    if current:
        chunks.append(current)
    return chunks
