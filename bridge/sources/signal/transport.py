"""Connections to signal-cli: unix socket, TCP, HTTP (+SSE), and signal-cli-rest-api's websocket.

Contract:
* `await open_channel(endpoint, ...)` connects and returns a `Channel`, or
  raises `SignalUnavailable` (nothing listening, refused, HTTP error).
* A Channel delivers what the daemon pushes, in order, as `Incoming` (the
  bytes of one notification line, SSE `data` or websocket frame, or an
  `Oversized` marker), through `next(timeout)` / `drain(n)`. After the last
  item before a disconnection, `next` raises `SignalUnavailable`.
* Backpressure: a reader stops reading from the daemon while `high_water`
  items wait, unless a request is outstanding (its response may be behind
  them), so memory stays bounded and a slow log slows signal-cli's writes.
* `call(method, params)` is a JSON-RPC 2.0 request (socket/TCP: on the same
  connection, matched by id; HTTP: `POST /api/v1/rpc`); an error response
  raises `SignalRpcError(code, message)`, a lost connection `SignalUnavailable`.
* `fetch_attachment(id, conversation, max_bytes)` returns the bytes:
  `getAttachment {id, groupId|recipient}` (base64 `data`), or for the rest-api
  `GET /v1/attachments/{id}`; raises `AttachmentTooLarge` past `max_bytes`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import orjson

from bridge.errors import SourceError
from bridge.sources.offload import off_loop
from bridge.sources.signal.framing import HEAD_BYTES, LineSplitter, Oversized, SseParser, classify, request

_CHUNK = 64 * 1024
CALL_TIMEOUT = 120.0


class SignalUnavailable(SourceError):
    """The daemon cannot be reached or the connection was lost (retry after a backoff)."""


class SignalRpcError(SourceError):
    """The daemon answered a request with a JSON-RPC error."""

    def __init__(self, code: object, message: str) -> None:
        self.code = code
        super().__init__(f"JSON-RPC error {code}: {message[:200]}")


class AttachmentTooLarge(SourceError):
    """The attachment is larger than the configured limit."""


@dataclass(frozen=True, slots=True)
class Incoming:
    data: bytes | Oversized
    #: SSE event id (HTTP transport only): resume point for `Last-Event-ID`.
    sse_id: str | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    kind: str  # "unix" | "tcp" | "http" | "ws"
    url: str
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def label(self) -> str:
        """For logs and gap notices: the transport and address, never credentials."""
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"{self.kind}:{self.host}:{self.port}"


def parse_endpoint(url: str) -> Endpoint:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return Endpoint("unix", url, path=(parts.netloc + parts.path) or "/")
    if parts.scheme in ("tcp", "http", "https", "ws", "wss") and parts.hostname:
        default = {"tcp": 7583, "http": 8080, "https": 443, "ws": 8080, "wss": 443}[parts.scheme]
        kind = {"https": "http", "wss": "ws"}.get(parts.scheme, parts.scheme)
        return Endpoint(kind, url.rstrip("/"), host=parts.hostname, port=parts.port or default)
    raise ValueError(f"unsupported signal endpoint {parts.scheme}://")


class Channel:
    """One live connection; subclasses read into the queue and implement requests."""

    can_subscribe = False
    #: Sent as `params.account` with requests (a multi-account daemon needs it); set by `open_channel`.
    account: str | None = None

    def __init__(self, high_water: int) -> None:
        self._items: deque[Incoming] = deque()
        self._high_water = high_water
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closed: str | None = None
        self._outstanding = 0
        self._reader: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed is not None

    # -- consumer side ---------------------------------------------------------

    async def next(self, timeout: float) -> Incoming | None:
        """The next item; None after `timeout` seconds without one; SignalUnavailable once closed and empty."""
        if not self._items and self._closed is None:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
        if self._items:
            return self._pop()
        if self._closed is not None:
            raise SignalUnavailable(self._closed)
        return None

    def drain(self, limit: int) -> list[Incoming]:
        out: list[Incoming] = []
        while self._items and len(out) < limit:
            out.append(self._pop())
        return out

    def _pop(self) -> Incoming:
        item = self._items.popleft()
        if len(self._items) < self._high_water:
            self._room.set()
        return item

    # -- reader side -----------------------------------------------------------

    async def _push(self, item: Incoming) -> None:
        self._items.append(item)
        self._arrived.set()
        while len(self._items) >= self._high_water and self._outstanding == 0 and self._closed is None:
            self._room.clear()
            await self._room.wait()

    def _close(self, reason: str) -> None:
        if self._closed is None:
            self._closed = reason
        self._arrived.set()
        self._room.set()

    def _start(self, coro: Any) -> None:
        self._reader = asyncio.create_task(self._guard(coro), name="signal-reader")

    async def _guard(self, coro: Any) -> None:
        try:
            await coro
            self._close("daemon closed the connection")
        except asyncio.CancelledError:
            self._close("connection closed")
            raise
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            self._close(f"connection lost ({type(exc).__name__})")

    async def aclose(self) -> None:
        self._close("connection closed")
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader

    # -- requests --------------------------------------------------------------

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        raise SignalRpcError(None, f"{method}: this endpoint does not speak JSON-RPC")

    async def fetch_attachment(self, attachment_id: str, conversation: str, max_bytes: int) -> bytes:
        params: dict[str, Any] = {"id": attachment_id}
        if self.account:
            params["account"] = self.account
        kind, _, peer = conversation.partition(":")
        params["groupId" if kind == "group" else "recipient"] = peer
        result = await self.call("getAttachment", params)
        data = result.get("data") if isinstance(result, dict) else None
        if not isinstance(data, str):
            raise SignalRpcError(None, "getAttachment result has no data")
        if len(data) > (max_bytes // 3 + 1) * 4 + 4:
            raise AttachmentTooLarge
        try:
            body = await off_loop(len(data), b64decode_chunked, data)
        except (binascii.Error, ValueError):
            raise SignalRpcError(None, "getAttachment data is not base64") from None
        if len(body) > max_bytes:
            raise AttachmentTooLarge
        return body


#: Characters per base64 decode call (a multiple of 4): about 3 ms each.
B64_CHUNK = 1 << 20


def b64decode_chunked(data: str) -> bytes:
    """Strict base64 decode in `B64_CHUNK` pieces, so that in a worker thread the event loop gets the GIL
    between pieces (binascii holds it for a whole call: 0.4 s for a 100 MiB attachment).

    Accepts and refuses exactly what `base64.b64decode(data, validate=True)` does.
    """
    if len(data) <= B64_CHUNK:
        return base64.b64decode(data, validate=True)
    if len(data) % 4:
        raise binascii.Error("Incorrect padding")
    parts = []
    for start in range(0, len(data), B64_CHUNK):
        piece = data[start : start + B64_CHUNK]
        if start + B64_CHUNK < len(data) and piece.endswith("="):
            raise binascii.Error("padding before the end")  # one call would refuse it too
        parts.append(base64.b64decode(piece, validate=True))
    return b"".join(parts)


class SocketChannel(Channel):
    """Newline-delimited JSON-RPC over a unix socket or TCP (signal-cli `daemon --socket/--tcp`)."""

    can_subscribe = True

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_line: int, max_response: int, hw: int
    ) -> None:
        super().__init__(hw)
        self._writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._max_line = max_line
        # Responses may be longer than notifications: getAttachment returns a file as base64.
        self._start(self._read(reader, LineSplitter(max(max_line, max_response))))

    async def _read(self, reader: asyncio.StreamReader, splitter: LineSplitter) -> None:
        while data := await reader.read(_CHUNK):
            for line in splitter.feed(data):
                # A response may be a getAttachment file as base64 (~133 MB): parsed off the loop.
                response = None if isinstance(line, Oversized) else await off_loop(len(line), classify, line)
                if response is not None:
                    future = self._waiting.pop(response.id, None) if isinstance(response.id, int) else None
                    if future is not None and not future.done():
                        future.set_result(response)
                    continue
                if isinstance(line, bytes) and len(line) > self._max_line:
                    line = Oversized(len(line), line[:HEAD_BYTES])
                await self._push(Incoming(line))

    def _close(self, reason: str) -> None:
        super()._close(reason)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(SignalUnavailable(reason))
        self._waiting.clear()

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        if self._closed is not None:
            raise SignalUnavailable(self._closed)
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self._outstanding += 1
        self._room.set()  # the reader must get to our response
        try:
            self._writer.write(request(request_id, method, params))
            await self._writer.drain()
            response = await asyncio.wait_for(future, CALL_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise SignalUnavailable(f"{method}: {type(exc).__name__}") from exc
        finally:
            self._outstanding -= 1
            self._waiting.pop(request_id, None)
        if response.error is not None:
            raise SignalRpcError(response.error.get("code"), str(response.error.get("message")))
        return response.result

    async def aclose(self) -> None:
        await super().aclose()
        self._writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await self._writer.wait_closed()


class HttpChannel(Channel):
    """signal-cli `daemon --http`: SSE from `GET /api/v1/events`, requests to `POST /api/v1/rpc`."""

    def __init__(self, session: aiohttp.ClientSession, base: str, max_line: int, hw: int) -> None:
        super().__init__(hw)
        self._session = session
        self._base = base
        self._ids = itertools.count(1)
        self._max_line = max_line

    async def connect(self, account: str | None, last_event_id: str | None) -> None:
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        params = {"account": account} if account else None
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
        url = f"{self._base}/api/v1/events"
        response = await self._session.get(url, headers=headers, params=params, timeout=timeout)
        if response.status != 200:
            response.release()
            raise SignalUnavailable(f"GET /api/v1/events answered HTTP {response.status}")
        self._start(self._read(response))

    async def _read(self, response: aiohttp.ClientResponse) -> None:
        splitter, parser = LineSplitter(self._max_line, keep_blank=True), SseParser()
        try:
            async for chunk in response.content.iter_any():
                for line in splitter.feed(chunk):
                    event = parser.feed(line)
                    if event is not None and event.event in (None, "receive"):
                        await self._push(Incoming(event.data, event.id))
        finally:
            response.release()

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        body = request(next(self._ids), method, params)
        try:
            async with self._session.post(
                f"{self._base}/api/v1/rpc",
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
            ) as response:
                if response.status == 201:
                    return None
                if response.status != 200:
                    raise SignalUnavailable(f"{method}: HTTP {response.status}")
                raw = await response.read()
                message = await off_loop(len(raw), orjson.loads, raw)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SignalUnavailable(f"{method}: {type(exc).__name__}") from exc
        except orjson.JSONDecodeError:
            raise SignalRpcError(None, f"{method}: response is not JSON") from None
        error = message.get("error") if isinstance(message, dict) else None
        if isinstance(error, dict):
            raise SignalRpcError(error.get("code"), str(error.get("message")))
        return message.get("result") if isinstance(message, dict) else None


class RestApiChannel(Channel):
    """signal-cli-rest-api (json-rpc mode): websocket `/v1/receive/{number}`, files at `/v1/attachments/{id}`."""

    def __init__(self, session: aiohttp.ClientSession, base: str, max_line: int, hw: int) -> None:
        super().__init__(hw)
        self._session = session
        self._base = base
        self._max = max_line

    async def connect(self, account: str) -> None:
        url = f"{self._base}/v1/receive/{quote(account, safe='')}"
        ws = await self._session.ws_connect(url, max_msg_size=self._max, heartbeat=30.0)
        self._start(self._read(ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for message in ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    await self._push(Incoming(str(message.data).encode("utf-8", "surrogatepass")))
                elif message.type is aiohttp.WSMsgType.BINARY:
                    await self._push(Incoming(bytes(message.data)))
                elif message.type is aiohttp.WSMsgType.ERROR:
                    self._close(f"websocket error ({type(ws.exception()).__name__})")
                    return
        finally:
            await ws.close()

    async def fetch_attachment(self, attachment_id: str, conversation: str, max_bytes: int) -> bytes:
        http_base = "http" + self._base[2:]  # ws:// -> http://, wss:// -> https://
        url = f"{http_base}/v1/attachments/{quote(attachment_id, safe='')}"
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=300)) as response:
                if response.status != 200:
                    raise SignalRpcError(response.status, f"GET /v1/attachments answered HTTP {response.status}")
                if response.content_length is not None and response.content_length > max_bytes:
                    raise AttachmentTooLarge
                body = bytearray()
                async for chunk in response.content.iter_chunked(_CHUNK):
                    body += chunk
                    if len(body) > max_bytes:
                        raise AttachmentTooLarge
                return bytes(body)
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
            raise SignalUnavailable(f"attachment download: {type(exc).__name__}") from exc


async def open_channel(
    endpoint: Endpoint,
    *,
    account: str | None,
    max_line: int,
    high_water: int,
    session: aiohttp.ClientSession | None,
    last_event_id: str | None = None,
    max_media: int = 0,
) -> Channel:
    """Connect (see module docstring); HTTP and websocket channels use `session`.

    `max_line` bounds a notification; a response may hold `max_media` bytes as base64.
    """
    channel = await _connect(endpoint, account, max_line, high_water, session, last_event_id, max_media)
    channel.account = account
    return channel


async def _connect(
    endpoint: Endpoint,
    account: str | None,
    max_line: int,
    high_water: int,
    session: aiohttp.ClientSession | None,
    last_event_id: str | None,
    max_media: int,
) -> Channel:
    try:
        if endpoint.kind in ("unix", "tcp"):
            if endpoint.kind == "unix":
                reader, writer = await asyncio.open_unix_connection(endpoint.path, limit=_CHUNK)
            else:
                reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port, limit=_CHUNK)
            return SocketChannel(reader, writer, max_line, max_media * 4 // 3 + _CHUNK, high_water)
        assert session is not None
        if endpoint.kind == "http":
            http = HttpChannel(session, endpoint.url, max_line, high_water)
            await http.connect(account, last_event_id)
            return http
        if not account:
            raise SignalUnavailable("the signal-cli-rest-api websocket needs [signal] account")
        ws = RestApiChannel(session, endpoint.url, max_line, high_water)
        await ws.connect(account)
        return ws
    except (OSError, aiohttp.ClientError, TimeoutError) as exc:
        raise SignalUnavailable(f"cannot connect to {endpoint.label} ({type(exc).__name__})") from exc
