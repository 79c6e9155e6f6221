"""Live Signal capture from a signal-cli daemon (JSON-RPC over unix socket/TCP, HTTP+SSE, rest-api websocket).

Contract with the capture pipeline:
- `SignalSource(cfg, sink, blobs).run(stop)` captures until `stop` is set,
  reconnecting with exponential backoff (fast: `backoff_initial` 0.2 s) while
  the daemon is unreachable; errors from the sink propagate.
- signal-cli keeps no history and has no cursor: what it pushes while nobody
  listens is gone unless it runs with `--receive-mode=manual` (or
  `on-connection`), where it only pulls from Signal's servers while a client
  is subscribed. With `receive_mode = "manual"` the source calls
  `subscribeReceive` after each socket/TCP connect (HTTP SSE and the rest-api
  websocket subscribe by connecting). See docs/signal.md for the window that
  remains (signal-cli acknowledges to Signal before our commit).
- Each batch (what arrived together, at most `batch_max`) is normalised,
  its attachments fetched, and committed with one `sink.commit(events,
  cursor)`; the next read happens after the commit returned (backpressure:
  the transport stops reading while a batch is pending). A re-delivered
  envelope has the same (source, conversation, event_id) and is stored once.
- The cursor is our own JSON `{"at": ms, "sse": last SSE event id}`: `at`
  (refreshed by an empty commit every `heartbeat_seconds` while idle) dates the
  start of an outage the bot itself was down for; `sse` is sent as
  `Last-Event-ID` so signal-cli's HTTP endpoint replays what it still holds.
- Every outage becomes a Kind.NOTICE event (`content.notice =
  "capture_gap"`, built by `sources.outage.gap_notice`, plus `endpoint` and
  `receive_mode`) committed on reconnect; an outage longer than `max_disconnected_seconds` logs an ALERT.
- Identities (`identity_join.py`; the pure part is `identities.py`): after each connect the
  source asks the daemon's `listContacts` (all recipients) and `listIdentities`, and for a 1:1 peer
  named only by "PNI:" or only by number it asks `listContacts {recipient: [peer]}` once per
  connection; envelopes naming a peer two ways teach the same (recorded by their own event's
  `identities`). Each new link the daemon reports is committed as a `signal.identity_mapping` STATE
  event (before the events it re-keys), and a 1:1 event whose peer is a known person's PNI or number
  is filed under that person's conversation (ACI, else number), keeping `conversation_as_received`.
  A daemon that does not answer these methods (older signal-cli, the rest-api websocket) only costs
  the join (counted).
- Receipts and typing notifications are counted (`self.counts`), not stored;
  a view-once message gets a compliance ALERT once durable (capture.report_compliance_alerts). Logs carry ids and
  counts only, never message content.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bridge import events
from bridge.clock import now_ms
from bridge.errors import SourceError
from bridge.events import ConversationId, Event, EventId, Kind
from bridge.sources import BlobSink, Sink
from bridge.sources.offload import off_loop
from bridge.sources.outage import Backoff, Outage, gap_notice, wait
from bridge.sources.signal.envelopes import normalise_envelope, unstored_kind
from bridge.sources.signal.framing import Oversized
from bridge.sources.signal.identity_join import IdentityJoin
from bridge.sources.signal.media import fetch_attachments
from bridge.sources.signal.transport import (
    Channel,
    Incoming,
    SignalRpcError,
    SignalUnavailable,
    open_channel,
    parse_endpoint,
)

__all__ = ["SignalSource", "SignalSourceConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SignalSourceConfig:
    """What the source needs; the capture pipeline maps `[signal]` config onto it."""

    endpoint: str
    account: str | None = None
    receive_mode: str = "manual"
    attachments_dir: Path | None = None
    max_media_bytes: int = 100 * 1024 * 1024
    max_message_bytes: int = 16 * 1024 * 1024
    max_disconnected_seconds: float = 300.0
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    batch_max: int = 200
    high_water: int = 400
    heartbeat_seconds: float = 60.0


class SignalSource:
    """One signal-cli endpoint (see module docstring)."""

    def __init__(self, cfg: SignalSourceConfig, sink: Sink, blobs: BlobSink | None = None) -> None:
        self.cfg = cfg
        self.sink = sink
        self.blobs = blobs
        self.endpoint = parse_endpoint(cfg.endpoint)
        #: Set while connected and subscribed (tests and health checks wait on it).
        self.connected = asyncio.Event()
        self.counts: Counter[str] = Counter()
        self._sse_id: str | None = None
        self._gap: Outage | None = None
        self._notice_conversation = ConversationId(f"notice:signal:{cfg.account or self.endpoint.label}")
        self._identities = IdentityJoin(cfg.account, self.counts)

    async def run(self, stop: asyncio.Event) -> None:
        """Capture until `stop` is set (see module docstring)."""
        self._resume(await self.sink.load_cursor())
        backoff = Backoff(self.cfg.backoff_initial, self.cfg.backoff_max)
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    channel = await open_channel(
                        self.endpoint,
                        account=self.cfg.account,
                        max_line=self.cfg.max_message_bytes,
                        high_water=self.cfg.high_water,
                        session=session,
                        last_event_id=self._sse_id,
                        max_media=self.cfg.max_media_bytes,
                    )
                except SignalUnavailable as exc:
                    self._outage(str(exc))
                    if await wait(stop, backoff.next()):
                        return
                    continue
                try:
                    await self._connected(channel, stop)
                    backoff.reset()
                except SignalUnavailable as exc:
                    self._outage(str(exc))
                    backoff.reset()  # it was up: retry at once-ish
                    if await wait(stop, backoff.delay):
                        return
                finally:
                    self.connected.clear()
                    await channel.aclose()

    def _resume(self, cursor: str | None) -> None:
        """Read our cursor: an outage since the last commit before a restart, and the SSE resume id."""
        if not cursor:
            return
        try:
            saved = orjson.loads(cursor)
        except orjson.JSONDecodeError:
            return
        if isinstance(saved, dict):
            sse = saved.get("sse")
            self._sse_id = sse if isinstance(sse, str) else None
            at = saved.get("at")
            if isinstance(at, int):
                self._gap = Outage(at, "capture was not running")

    def _outage(self, reason: str) -> None:
        self.connected.clear()
        if self._gap is None:
            self._gap = Outage(now_ms(), reason)
            log.warning("signal-cli connection lost; reconnecting", extra={"endpoint": self.endpoint.label})
        gap = self._gap
        if gap.overdue(self.cfg.max_disconnected_seconds):
            log.error(
                "ALERT signal capture disconnected too long; messages may be missed",
                extra={"endpoint": self.endpoint.label, "since_ms": gap.start_ms, "reason": gap.reason},
            )

    async def _connected(self, channel: Channel, stop: asyncio.Event) -> None:
        subscription = None
        if self.cfg.receive_mode == "manual" and channel.can_subscribe:
            try:
                subscription = await channel.call("subscribeReceive", self._account_params())
            except SignalRpcError as exc:
                log.error("signal-cli refused subscribeReceive", extra={"code": str(exc.code)})
                raise SignalUnavailable(f"subscribeReceive refused ({exc.code})") from exc
            log.info("signal-cli subscribed", extra={"subscription": str(subscription)})
        if self._gap is not None:
            await self._commit([self._gap_notice(self._gap)])
            self._gap = None
        if mappings := await self._identities.on_connect(channel, now_ms()):
            await self._commit(mappings)
            self._after_commit(mappings)
        log.info("signal-cli connected", extra={"endpoint": self.endpoint.label, "mode": self.cfg.receive_mode})
        self.connected.set()
        await self._pump(channel, stop)
        await self._finish(channel, subscription)

    async def _finish(self, channel: Channel, subscription: object) -> None:
        """On stop: unsubscribe (signal-cli stops pulling from Signal), then commit what was read."""
        if isinstance(subscription, int):
            with contextlib.suppress(SourceError, TimeoutError):
                params = {**(self._account_params() or {}), "subscription": subscription}
                await asyncio.wait_for(channel.call("unsubscribeReceive", params), 5.0)
        while rest := channel.drain(self.cfg.batch_max):
            await self._handle(channel, rest)

    def _account_params(self) -> dict[str, Any] | None:
        return {"account": self.cfg.account} if self.cfg.account else None

    async def _pump(self, channel: Channel, stop: asyncio.Event) -> None:
        stop_task = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                next_task = asyncio.ensure_future(channel.next(self.cfg.heartbeat_seconds))
                await asyncio.wait({next_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
                if not next_task.done():
                    next_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await next_task
                    return
                first = next_task.result()  # raises SignalUnavailable once the connection is gone
                if first is None:
                    await self._commit([])  # heartbeat: keeps the cursor's "at" fresh
                    continue
                await self._handle(channel, [first, *channel.drain(self.cfg.batch_max - 1)])
        finally:
            stop_task.cancel()

    async def _handle(self, channel: Channel, items: list[Incoming]) -> None:
        received_at = now_ms()
        batch: list[Event] = []
        seen: set[tuple[str, str, str]] = set()
        for item in items:
            if item.sse_id is not None:
                self._sse_id = item.sse_id
            size = len(item.data) if isinstance(item.data, bytes) else 0
            for event in await off_loop(size, self._normalise, item, received_at):
                if event.key not in seen:
                    seen.add(event.key)
                    batch.append(event)
        batch = await self._identities.join(channel, batch, received_at)
        if any(a.status == "pending" for e in batch for a in e.attachments):
            batch = await self._with_media(channel, batch)
        await self._commit(batch)
        self._after_commit(batch)

    async def _with_media(self, channel: Channel, batch: list[Event]) -> list[Event]:
        """Fetch attachments; a socket connection that just dropped is replaced by a side connection.

        Only in manual mode: there an unsubscribed connection receives nothing, so no envelope can be
        delivered to (and lost with) the side connection. HTTP and rest-api requests do not depend on
        the event stream.
        """
        side: Channel | None = None
        if channel.closed and channel.can_subscribe and self.cfg.receive_mode == "manual":
            with contextlib.suppress(SignalUnavailable, TimeoutError):
                side = await asyncio.wait_for(
                    open_channel(
                        self.endpoint, account=self.cfg.account, max_line=self.cfg.max_message_bytes,
                        high_water=self.cfg.high_water, session=None, max_media=self.cfg.max_media_bytes,
                    ),
                    5.0,
                )  # fmt: skip
        folder, limit = self.cfg.attachments_dir, self.cfg.max_media_bytes
        try:
            return [await fetch_attachments(e, side or channel, self.blobs, folder, limit) for e in batch]
        finally:
            if side is not None:
                await side.aclose()

    def _normalise(self, item: Incoming, received_at: int) -> list[Event]:
        if isinstance(item.data, Oversized):
            self.counts["oversized"] += 1
            return [_oversized_event(item.data, received_at)]
        found = normalise_envelope(item.data, account=self.cfg.account, received_at=received_at)
        if not found:
            self.counts[unstored_kind(item.data) or "empty"] += 1
        return found

    async def _commit(self, batch: Sequence[Event]) -> None:
        cursor = orjson.dumps({"at": now_ms(), "sse": self._sse_id}).decode("ascii")
        await self.sink.commit(batch, cursor)

    def _after_commit(self, batch: Sequence[Event]) -> None:
        for event in batch:
            self.counts[event.kind.value] += 1
            if event.kind is Kind.UNKNOWN:
                log.warning("signal envelope kept as unknown", extra={"event_id": event.event_id})

    def _gap_notice(self, gap: Outage) -> Event:
        end = now_ms()
        log.warning("signal capture gap recorded", extra={"gap_ms": end - gap.start_ms, "reason": gap.reason})
        detail = {"endpoint": self.endpoint.label, "receive_mode": self.cfg.receive_mode}
        return gap_notice(events.SIGNAL, self._notice_conversation, gap, end, detail)


def _oversized_event(item: Oversized, received_at: int) -> Event:
    """A line longer than max_message_bytes: kept as UNKNOWN with its size and first bytes."""
    head = events.unparsed_raw(item.head)
    return Event(
        source=events.SIGNAL,
        conversation=ConversationId("unknown"),
        event_id=EventId(f"oversized:{item.size}:{hashlib.sha256(item.head).hexdigest()}"),
        kind=Kind.UNKNOWN,
        sender=None,
        sent_at=None,
        received_at=received_at,
        raw={**head, "size": item.size, "truncated": True},
        problem=f"message of {item.size} bytes exceeds max_message_bytes; first {len(item.head)} bytes kept",
    )
