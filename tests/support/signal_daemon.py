"""A stand-in for `signal-cli daemon`, for tests. NOT signal-cli.

The real signal-cli needs Signal's servers (registration, the message
websocket), which these machines cannot reach. This stand-in speaks what
signal-cli exposes to clients, as read from its sources (0.13/0.14:
`DaemonCommand`, `SignalJsonRpcDispatcherHandler`, `HttpServerHandler`,
`SseEventBuffer`, `ServerSentEventSender`, man page signal-cli-jsonrpc.5) and
from signal-cli-rest-api's json-rpc mode:

* unix socket and TCP: JSON-RPC 2.0, one JSON object per line; methods
  `subscribeReceive` (result: a subscription id from one process-wide
  counter), `unsubscribeReceive {subscription}`, `getAttachment {id,
  recipient|groupId}` (result `{"data": base64}`), `version`, `listContacts {recipient(s)?,
  allRecipients?}` (a list of `JsonContact`, src/main/java/org/asamk/signal/json/JsonContact.java, filled
  as `ListContactsCommand` does: `uuid` is the ACI, no PNI field; a "PNI:<uuid>" recipient is resolved to
  the recipient holding it, as `RecipientIdentifier.Single.fromString` does) and `listIdentities
  {number?}` (a list of `ListIdentitiesCommand.JsonIdentity`); notifications
  `{"jsonrpc":"2.0","method":"receive","params":{"envelope":...,"account":...}}`,
  or in the subscription shape `params: {"subscription": N, "result": {...}}`.
* HTTP: `POST /api/v1/rpc`, `GET /api/v1/events` (SSE: `id:`, `event:receive`,
  `data:<params>`, blank line; `:` keep-alives; `Last-Event-ID` replays the
  buffer, all of it when the id is unknown), `GET /api/v1/check`.
* signal-cli-rest-api: websocket `GET /v1/receive/{number}` (each frame is the
  params object), `GET /v1/attachments/{id}`.

Receive modes, as in signal-cli: "on-start" consumes envelopes from the
"server queue" (what Signal's servers hold for the account) whether or not a
client listens, so envelopes arriving while nobody listens are lost
(`self.lost`); "on-connection" and "manual" only pull while a client is
connected / subscribed (SSE and websocket clients count as subscribed), so
envelopes wait in the queue. Faults for tests: `drop_after(n)` closes every
connection right after the n-th delivery, `outage(seconds)` stops listening
for a while, `emit_raw(line)` sends a malformed line, `redeliver(k)` repeats
the last k envelopes after the next (re)connect.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

ACCOUNT = "+31600000001"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "signal"
_SUBSCRIPTIONS = itertools.count(0)  # signal-cli: one static AtomicInteger for all connections


def load_fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return data


def fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.json"))


@dataclass
class Recipient:
    """One recipient in the stand-in's store (signal-cli's `RecipientAddress` plus contact/identity bits)."""

    aci: str | None = None
    pni: str | None = None  # "PNI:<uuid>", as signal-cli's ServiceId.toString() writes it
    number: str | None = None
    name: str | None = None
    is_contact: bool = True
    fingerprint: str = "05" + "ab" * 32

    def matches(self, identifier: str) -> bool:
        return identifier in (self.aci, self.pni, self.number)

    def contact_json(self) -> dict[str, Any]:
        """`JsonContact`, fields in the record's order; nulls written (signal-cli's default)."""
        return {
            "number": self.number, "uuid": self.aci, "username": None, "name": self.name or "",
            "givenName": self.name, "familyName": None, "nickName": None, "nickGivenName": None,
            "nickFamilyName": None, "note": None, "color": None, "isArchived": False, "isBlocked": False,
            "isHidden": False, "messageExpirationTime": 0, "profileSharing": True, "unregistered": False,
            "profile": {"lastUpdateTimestamp": 0, "givenName": self.name, "familyName": None, "about": None,
                        "aboutEmoji": None, "hasAvatar": False, "mobileCoinAddress": None},
        }  # fmt: skip

    def identity_json(self) -> dict[str, Any]:
        """`ListIdentitiesCommand.JsonIdentity`."""
        return {
            "number": self.number, "uuid": self.aci, "fingerprint": self.fingerprint,
            "safetyNumber": "12345 67890 12345 67890 12345 67890 12345 67890 12345 67890 12345 67890",
            "scannableSafetyNumber": None, "trustLevel": "TRUSTED_UNVERIFIED", "addedTimestamp": 1700000000000,
        }  # fmt: skip


@dataclass(eq=False)
class _Client:
    """One connected client: socket (with its subscriptions), SSE or websocket."""

    kind: str
    send: Any  # async (bytes) -> None
    close: Any  # () -> None
    subscriptions: list[int] = field(default_factory=list)


class SignalDaemon:
    def __init__(self, tmp: Path, *, mode: str = "manual", keepalive: float = 15.0) -> None:
        self.mode = mode
        self.account = ACCOUNT
        self.keepalive = keepalive
        self.socket_path = tmp / "signal-cli.sock"
        self.tcp_port = 0
        self.http_port = 0
        self.attachments: dict[str, bytes] = {}
        self.recipients: list[Recipient] = []
        self.methods_missing: set[str] = set()  # answered "Method not implemented" (an older signal-cli)
        self.lost: list[Any] = []
        self.delivered = 0
        self.requests: list[tuple[str, Any]] = []
        self._queue: deque[dict[str, Any] | bytes] = deque()
        self._changed = asyncio.Event()
        self._clients: list[_Client] = []
        self._servers: list[asyncio.Server] = []
        self._runner: web.AppRunner | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._drop_after: int | None = None
        self._redeliver: int = 0
        self._recent: deque[dict[str, Any] | bytes] = deque(maxlen=1000)
        self._sse: deque[tuple[int, bytes]] = deque(maxlen=1000)
        self._sse_prefix = f"{int(time.time() * 1000)}-"
        self._sse_seq = itertools.count(1)
        self._closing: set[asyncio.Future[bool]] = set()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        await self._listen()
        self._loop_task = asyncio.create_task(self._deliver_loop())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await self._unlisten()

    async def _listen(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        self._servers = [
            await asyncio.start_unix_server(self._socket_client, path=str(self.socket_path), limit=2**26),
            await asyncio.start_server(
                self._socket_client, "127.0.0.1", self.tcp_port, reuse_address=True, limit=2**26
            ),
        ]
        self.tcp_port = self._servers[1].sockets[0].getsockname()[1]
        app = web.Application(client_max_size=2**26)
        app.router.add_post("/api/v1/rpc", self._http_rpc)
        app.router.add_get("/api/v1/events", self._http_events)
        app.router.add_get("/api/v1/check", self._http_check)
        app.router.add_get("/v1/receive/{number}", self._ws_receive)
        app.router.add_get("/v1/attachments/{id}", self._rest_attachment)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.http_port, reuse_address=True)
        await site.start()
        if not self.http_port:
            server = site._server
            assert server is not None and getattr(server, "sockets", None)
            self.http_port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def _unlisten(self) -> None:
        for client in list(self._clients):
            client.close()
        self._clients.clear()
        for server in self._servers:
            server.close()
        self._servers = []
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def endpoints(self) -> dict[str, str]:
        return {
            "unix": f"unix://{self.socket_path}",
            "tcp": f"tcp://127.0.0.1:{self.tcp_port}",
            "http": f"http://127.0.0.1:{self.http_port}",
            "ws": f"ws://127.0.0.1:{self.http_port}",
        }

    # -- test controls ---------------------------------------------------------

    def enqueue(self, params: dict[str, Any] | bytes) -> None:
        """An envelope reaches Signal's servers for the account (or a raw line, bytes, to emit as is)."""
        self._queue.append(params)
        self._changed.set()

    def emit_raw(self, line: bytes) -> None:
        self.enqueue(line)

    def drop_after(self, n: int) -> None:
        """Close every client connection right after the n-th delivery from now."""
        self._drop_after = self.delivered + n

    def redeliver(self, k: int) -> None:
        self._redeliver = k

    async def outage(self, seconds: float) -> None:
        """Stop listening (connections closed) for `seconds`, then listen again on the same addresses."""
        await self._unlisten()
        await asyncio.sleep(seconds)
        await self._listen()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def subscribed(self) -> bool:
        return any(self._receiving(c) for c in self._clients)

    # -- delivery --------------------------------------------------------------

    def _receiving(self, client: _Client) -> bool:
        return client.kind != "socket" or self.mode != "manual" or bool(client.subscriptions)

    async def _deliver_loop(self) -> None:
        while True:
            receivers = [c for c in self._clients if self._receiving(c)]
            if not self._queue or (not receivers and self.mode != "on-start"):
                self._changed.clear()
                await self._changed.wait()
                continue
            item = self._queue.popleft()
            if not receivers:
                self.lost.append(item)  # on-start: signal-cli received it and nobody listened
                continue
            await self._send_all(receivers, item)
            self._recent.append(item)
            self.delivered += 1
            if self._drop_after is not None and self.delivered >= self._drop_after:
                self._drop_after = None
                for client in list(self._clients):
                    client.close()
                self._clients.clear()

    async def _send_all(self, receivers: list[_Client], item: dict[str, Any] | bytes) -> None:
        data = item if isinstance(item, bytes) else json.dumps(item, ensure_ascii=False).encode()
        if not isinstance(item, bytes):
            self._sse.append((next(self._sse_seq), data))
        for client in receivers:
            try:
                await client.send(self._frame(client, item, data))
            except (OSError, ConnectionError, RuntimeError):
                client.close()
                with contextlib.suppress(ValueError):
                    self._clients.remove(client)

    def _frame(self, client: _Client, item: dict[str, Any] | bytes, data: bytes) -> bytes:
        if isinstance(item, bytes):
            return data.rstrip(b"\n") + b"\n" if client.kind == "socket" else data
        if client.kind != "socket":
            return data
        if client.subscriptions:
            frames = [
                {"jsonrpc": "2.0", "method": "receive", "params": {"subscription": sub, "result": item}}
                for sub in client.subscriptions
            ]
            return b"".join(json.dumps(f, ensure_ascii=False).encode() + b"\n" for f in frames)
        return json.dumps({"jsonrpc": "2.0", "method": "receive", "params": item}, ensure_ascii=False).encode() + b"\n"

    def _joined(self, client: _Client) -> None:
        self._clients.append(client)
        if self._redeliver:
            self._queue.extendleft(reversed(list(self._recent)[-self._redeliver :]))
            self._redeliver = 0
        self._changed.set()

    # -- JSON-RPC methods ------------------------------------------------------

    def _rpc(self, method: str, params: Any, client: _Client | None) -> Any:
        self.requests.append((method, params))
        params = params if isinstance(params, dict) else {}
        if method == "version":
            return {"version": "0.14.6 (stand-in)"}
        if method == "subscribeReceive" and client is not None:
            subscription = next(_SUBSCRIPTIONS)
            client.subscriptions.append(subscription)
            self._changed.set()
            return subscription
        if method == "unsubscribeReceive" and client is not None:
            sub = params.get("subscription")
            if sub not in client.subscriptions:
                raise _RpcError(-1, "Unknown subscription id")
            client.subscriptions.remove(sub)
            return {}
        if method in self.methods_missing:
            raise _RpcError(-32601, "Method not implemented")
        if method == "listContacts":
            wanted = params.get("recipient", params.get("recipients")) or []
            wanted = wanted if isinstance(wanted, list) else [wanted]
            found = [r for r in self.recipients if r.is_contact or params.get("allRecipients") is True]
            if wanted:
                found = [r for r in found if any(r.matches(w) for w in wanted)]
            return [r.contact_json() for r in found]
        if method == "listIdentities":
            number = params.get("number")
            return [r.identity_json() for r in self.recipients if number is None or r.matches(number)]
        if method == "getAttachment":
            attachment_id = params.get("id")
            if not isinstance(attachment_id, str) or not (params.get("recipient") or params.get("groupId")):
                raise _RpcError(-32602, "getAttachment needs id and recipient or groupId")
            if attachment_id not in self.attachments:
                raise _RpcError(-3, f"An error occurred reading attachment: {attachment_id[:64]}")
            return {"data": base64.b64encode(self.attachments[attachment_id]).decode("ascii")}
        raise _RpcError(-32601, "Method not implemented")

    def _answer(self, message: Any, client: _Client | None) -> dict[str, Any]:
        if not isinstance(message, dict) or not isinstance(message.get("method"), str):
            return {"jsonrpc": "2.0", "error": {"code": -32600, "message": "method field must be set"}, "id": None}
        try:
            result = self._rpc(message["method"], message.get("params"), client)
        except _RpcError as exc:
            return {"jsonrpc": "2.0", "error": {"code": exc.code, "message": str(exc)}, "id": message.get("id")}
        return {"jsonrpc": "2.0", "result": result, "id": message.get("id")}

    # -- transports ------------------------------------------------------------

    async def _socket_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lock = asyncio.Lock()

        async def send(data: bytes) -> None:
            async with lock:
                writer.write(data)
                await writer.drain()

        client = _Client("socket", send, writer.close)
        self._joined(client)
        try:
            while line := await reader.readline():
                with contextlib.suppress(ValueError):
                    await send(json.dumps(self._answer(json.loads(line), client)).encode() + b"\n")
        except (OSError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._clients.remove(client)
            writer.close()

    async def _http_check(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _http_rpc(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("application/json"):
            return web.Response(status=415)
        return web.json_response(self._answer(await request.json(), None))

    async def _http_events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        closed = asyncio.Event()

        async def send(data: bytes) -> None:
            seq = self._sse[-1][0] if self._sse else 0
            await response.write(f"id:{self._sse_prefix}{seq}\nevent:receive\ndata:".encode() + data + b"\n\n")

        last = request.headers.get("Last-Event-ID")
        if last is not None:  # replay what the buffer holds after it (all of it for an unknown id)
            after = int(last[len(self._sse_prefix) :]) if last.startswith(self._sse_prefix) else 0
            for seq, data in list(self._sse):
                if seq > after:
                    await response.write(f"id:{self._sse_prefix}{seq}\nevent:receive\ndata:".encode() + data + b"\n\n")
        client = _Client("sse", send, closed.set)
        self._joined(client)
        try:
            while not closed.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closed.wait(), self.keepalive)
                if not closed.is_set():
                    await response.write(b":\n")
        except (OSError, ConnectionError, RuntimeError):
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._clients.remove(client)
        if request.transport is not None:
            request.transport.close()
        return response

    async def _ws_receive(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=2**26)
        await ws.prepare(request)

        async def send(data: bytes) -> None:
            await ws.send_str(data.decode("utf-8", "replace"))

        def close() -> None:
            self._closing.add(asyncio.ensure_future(ws.close()))

        client = _Client("ws", send, close)
        self._joined(client)
        try:
            async for message in ws:
                if message.type is WSMsgType.ERROR:
                    break
        finally:
            with contextlib.suppress(ValueError):
                self._clients.remove(client)
        return ws

    async def _rest_attachment(self, request: web.Request) -> web.Response:
        attachment_id = request.match_info["id"]
        if attachment_id not in self.attachments:
            return web.Response(status=404)
        return web.Response(body=self.attachments[attachment_id], content_type="application/octet-stream")


class _RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)
