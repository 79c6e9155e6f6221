"""Live Matrix capture: our own sync loop on matrix-nio, end-to-end encrypted.

Contract with the capture pipeline:
- `MatrixSource(cfg, sink, blobs).run(stop)` syncs until `stop` is set,
  reconnecting with exponential backoff while the homeserver is unreachable or
  refuses; a refused login (`MatrixLoginError`) and any error from the sink
  propagate (retrying cannot fix either).
- At start it calls `sink.load_cursor()`. Each sync response ends with one
  `sink.commit(events, cursor)`; the next sync starts only after the commit
  returned, so the token is durable with (never before) its events. A crash
  replays at most one batch; the log deduplicates on (source, conversation,
  event_id).
- The cursor is the source's whole resume state (`state`): the sync token,
  the rooms already backfilled and the undecryptable events awaiting keys (as
  ids), a small versioned JSON document committed in the transaction of the
  events it describes. No side file: an old `source_state.json` is folded into
  the state on connect, committed with the next batch, then deleted.
- Gaps are backfilled through /messages (see `backfill`): a `limited`
  timeline from the previous token; a room seen for the first time (first run,
  or just joined) from the start of the history the bot may see. Each page is
  committed on its own with `cursor=None` (the stored cursor stays; or, when the
  page changed the state, the document with the same token), before the
  sync batch's final commit: memory stays bounded by the page size.
- An outage (homeserver unreachable or refusing, at start-up or mid-stream)
  is logged when it starts and becomes one Kind.NOTICE event (`content.notice
  = "capture_gap"`, built by `sources.outage.gap_notice`, plus `homeserver`)
  committed with the first sync batch after it. Nothing is lost meanwhile (the homeserver keeps
  the history; the cursor and backfill pick it up): the notice is the record
  that capture was late, not that it missed events.
- Holes the source can see (see `holes`): an event whose `prev_events` the
  bot never saw in its room, or a `limited` timeline whose backfill
  /messages refused (403, 404...). One `capture_gap` notice per room and
  batch, in that room's conversation, with reason `prev_events_unseen` or
  `limited_sync_unfilled`, the span (newest event seen before the hole to the
  first after it) and the ids; committed with the batch. The known ids per
  room travel in the committed state (`state.heads`), so a restart does not
  lose them. A transient refusal (rate limit, unknown error) is retried as
  an outage instead: the cursor stays, nothing is skipped.
- Room upgrades (see `upgrades`): a tombstone seen in a joined room (timeline,
  backfill, or the state of a room seen for the first time) makes the bot
  join the replacement room on its own, before the batch is committed; a
  refused join is recorded as a `capture_gap` notice in the old room (reason
  `successor_room_not_joined`). A stored `m.room.create` naming a
  predecessor adds a `room_upgrade` notice in the new room pointing back. A
  successor whose create event does not name the old room is a lure: left
  again, recorded in the old room (`room_upgrade_refused`).
- Invites are accepted from `allowed_inviters` or for `rooms`, else declined;
  logs carry ids, never message content.
- Encrypted events nio cannot decrypt are committed as `undecryptable`, their
  keys requested, and retried when keys arrive (see `crypto`, `late`).
- Media is fetched into `blobs` (see `media`); without `blobs` the
  attachments stay "pending" references.
- Events in bridged rooms carry `content["bridge"]`: the room's bridge state
  and the sender's remote identity (see `bridges`).
- With `spool_dir` (and `spool_sink`), plain-room events sealed by Chatarchief's
  Synapse module at persistence time are appended from the spool while
  connected (see `spool`), normalised, annotated and given their media by the
  same code as the sync loop's, under their own cursor (the spool position);
  the sync loop stays the complete record and the log's dedup keeps one copy.

What a sync batch stores, backfills, accepts and skips is decided by the pure
`planner.plan` (unit-tested without a homeserver); this module carries the
plan out on nio.

nio pitfalls handled here: never `sync_forever` (it acknowledges by itself);
`store_sync_tokens=False` (nio would save the token before we commit); key
upload/query/claim and to-device sending run between syncs by hand; nio's
internal endless retry on connection errors is capped so that our backoff and
`stop` stay in control.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from nio import AsyncClientConfig, MegolmEvent
from nio.exceptions import LocalProtocolError

from bridge.clock import now_ms
from bridge.durable import fsync_dir
from bridge.errors import DataError, SourceError
from bridge.events import MATRIX, ConversationId, Event, EventId, Kind
from bridge.sources import BlobSink, Sink
from bridge.sources.matrix import crypto
from bridge.sources.matrix.backfill import gap_pages
from bridge.sources.matrix.bridges import BridgeTracker
from bridge.sources.matrix.client import (
    LeanStore,
    MatrixLoginError,
    MatrixRequestError,
    RawKeepingClient,
    checked,
    close_quietly,
    fetch_event,
    open_session,
)
from bridge.sources.matrix.confirm import GRACE_SECONDS, Confirmations, unconfirmed_notice
from bridge.sources.matrix.cross_signing import CrossSigningError, ensure_cross_signed
from bridge.sources.matrix.follow import follow_upgrade
from bridge.sources.matrix.invites import handle_invites, join_configured
from bridge.sources.matrix.late import late_decryptions
from bridge.sources.matrix.media import MediaFetcher, fetch_attachments
from bridge.sources.matrix.normalise import normalise
from bridge.sources.matrix.planner import Backfill, RoomPlan, Rules, SyncState, plan
from bridge.sources.matrix.redacted import recover_original
from bridge.sources.matrix.spool import end_of, tail
from bridge.sources.matrix.state import LEGACY_FILE, SourceState, decode, encode, migrate_legacy, pending_event
from bridge.sources.matrix.timing import SyncTimer
from bridge.sources.matrix.upgrades import Tombstone, back_link, tombstone
from bridge.sources.matrix.watch import EMPTY, HoleWatch
from bridge.sources.outage import Backoff, Outage, gap_notice, wait

__all__ = ["MatrixSource", "MatrixSourceConfig"]

#: `_add_events(checked=_ALL)`: check every event (a backfill page is all timeline).
_ALL: frozenset[str] = frozenset({"*all*"})
#: Refusals retried as an outage (the cursor stays) rather than recorded as a hole.
_TRANSIENT = frozenset({None, "M_LIMIT_EXCEEDED", "M_UNKNOWN", "M_UNKNOWN_TOKEN"})

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MatrixSourceConfig:
    """What the source needs; the capture pipeline maps `[matrix]` config onto it."""

    homeserver: str
    store_dir: Path
    #: Encrypts nio's crypto store; derived from our key material, never a default.
    pickle_key: bytes
    user_id: str | None = None
    password_file: Path | None = None
    access_token_file: Path | None = None
    device_name: str = "chatarchief"
    allowed_inviters: frozenset[str] = frozenset()
    rooms: frozenset[str] = frozenset()
    max_media_bytes: int = 100 * 1024 * 1024
    sync_timeout_ms: int = 30_000
    #: Events per room per sync; a gap past it is backfilled through /messages.
    timeline_limit: int = 50
    backfill_page: int = 100
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    #: The sealed spool of Chatarchief's Synapse module, and the key that opens it (`spool.spool_private_key`).
    spool_dir: Path | None = None
    spool_key: X25519PrivateKey | None = None
    spool_poll_seconds: float = 0.005
    #: How long a spooled event may wait for the sync loop to bring it before it is questioned (`confirm`).
    spool_confirm_seconds: float = GRACE_SECONDS


def _sync_filter(timeline_limit: int) -> dict[str, Any]:
    """What the bot syncs: rooms' timelines and state, to-device and device lists (never filtered: keys arrive
    there). Read receipts, typing, presence and account data are left out: nothing archives them, and each one
    woke the long-poll for a sync round and a commit (an fsync) of its own, which a message arriving meanwhile
    waited behind: every reader's client sends receipts and typing around every message (docs/latency.md)."""
    return {
        "room": {
            "timeline": {"limit": timeline_limit},
            "state": {"lazy_load_members": False},
            "ephemeral": {"types": []},
            "account_data": {"types": []},
        },
        "presence": {"types": []},
        "account_data": {"types": []},
    }


#: The filter of the to-device catch-up: no rooms, nothing but to-device messages and device lists.
_TO_DEVICE_ONLY: dict[str, Any] = {
    "room": {"rooms": []},
    "presence": {"types": []},
    "account_data": {"types": []},
}
#: Catch-up rounds at most (Synapse hands out 100 to-device messages per response; each round deletes what the
#: one before delivered, so the queue shrinks). A standby that waited a year may hold tens of thousands of room
#: keys; the bound only stops a server that never runs dry.
_CATCH_UP_ROUNDS = 10_000


@dataclass(slots=True)
class _Batch:
    """One sync response's worth of work, built before the commit, applied after it."""

    events: list[Event]
    backfilled: list[str]
    undecrypted: list[MegolmEvent]
    #: Pending event ids settled by this batch (decrypted late, or given up).
    resolved: list[str]


async def prepare_device(cfg: MatrixSourceConfig) -> None:
    """Log this bot's device in and upload its keys, then close: what a standby does before it waits for the
    writer lock. Senders share a room's key with every device of the bot they know, so the standby's device
    must exist with keys before officials' rooms are created; its queued room keys are collected when it takes
    over (`MatrixSource._catch_up_to_device`). A refused login propagates (`MatrixLoginError`); an unreachable
    homeserver is only logged (the source retries when it takes over)."""
    client = _new_client(cfg, None)
    try:
        await _open_device(client, cfg)
    except SourceError as exc:
        log.warning("standby: could not prepare its Matrix device yet", extra={"error": str(exc)})
    else:
        log.info("standby: Matrix device ready", extra={"device": client.device_id})
    finally:
        await close_quietly(client)


def _new_client(cfg: MatrixSourceConfig, timer: SyncTimer | None) -> RawKeepingClient:
    cfg.store_dir.mkdir(parents=True, exist_ok=True)
    config = AsyncClientConfig(
        encryption_enabled=True,
        store_sync_tokens=False,
        pickle_key=base64.b64encode(cfg.pickle_key).decode("ascii"),
        store=LeanStore,
        # nio retries connection errors forever by default; one retry, then our backoff.
        max_timeouts=1,
        request_timeout=max(30.0, cfg.sync_timeout_ms / 1000 + 15),
    )
    client = RawKeepingClient(cfg.homeserver, cfg.user_id or "", store_path=str(cfg.store_dir), config=config)
    client.timer = timer
    return client


async def _open_device(client: RawKeepingClient, cfg: MatrixSourceConfig) -> None:
    """Log in (or restore the session), then keys up before anything else: a device must exist with keys
    before it is invited, or senders never share room keys with it."""
    await open_session(
        client,
        homeserver=cfg.homeserver,
        store_dir=cfg.store_dir,
        user_id=cfg.user_id,
        password_file=cfg.password_file,
        access_token_file=cfg.access_token_file,
        device_name=cfg.device_name,
        session_key=cfg.pickle_key,
    )
    await maintain_keys(client)
    await _cross_sign(client, cfg)


async def _cross_sign(client: RawKeepingClient, cfg: MatrixSourceConfig) -> None:
    """Best effort: without it only clients that exclude unsigned devices (MSC4153) stop sharing."""
    password = None
    if cfg.password_file is not None and cfg.access_token_file is None:
        password = cfg.password_file.read_text(encoding="utf-8").strip()
    try:
        await ensure_cross_signed(client, cfg.store_dir, cfg.pickle_key, password)
    except CrossSigningError as exc:
        log.warning("device not cross-signed", extra={"error": str(exc)})


async def maintain_keys(client: RawKeepingClient) -> None:
    """What `sync_forever` does between syncs: one-time keys, device lists, Olm sessions."""
    if client.should_upload_keys:
        await checked(client.keys_upload(), "keys upload")
    if client.should_query_keys:
        await checked(client.keys_query(), "keys query")
    if client.should_claim_keys:
        await checked(client.keys_claim(client.get_users_for_key_claiming()), "keys claim")
    for response in await client.send_to_device_messages():
        if hasattr(response, "status_code"):  # nio keeps failed ones queued for the next round
            log.warning("to-device message refused", extra={"code": str(response.status_code)})


async def _with_prev_content(client: RawKeepingClient, room_id: str, raw: dict[str, Any]) -> None:
    """Give a spooled state event that replaced another the `unsigned.prev_content` and `prev_sender` the sync
    loop's copy has. Synapse adds them when it serves the event to a client, not when it persists it, so the
    module's frame (taken at persistence) holds only `replaces_state`; without them the spool's record of, say,
    the archiver's own join would lack `previous` and the sync loop's copy would be kept beside it as a
    conflicting version. Left as it is when the server does not give the replaced event."""
    unsigned = raw.get("unsigned")
    if not isinstance(unsigned, dict) or "prev_content" in unsigned:
        return
    replaced = unsigned.get("replaces_state")
    if not isinstance(replaced, str):
        return
    previous = await fetch_event(client, room_id, replaced)
    if previous is None or not isinstance(content := previous.get("content"), dict):
        return
    raw["unsigned"] = {**unsigned, "prev_content": content, "prev_sender": previous.get("sender")}


async def _query_new_devices(client: RawKeepingClient) -> None:
    """Before the spool's decrypted events are recorded: if nio noted a sender whose devices the bot has not
    queried yet (it does while decrypting), query them now, so each record's evidence (`device_known`,
    `device_key_matches`) says what the homeserver publishes for the sending device. The sync loop does this
    after each sync; the spool is ahead of it. A failure leaves the evidence as it is (unknown device), never
    the event."""
    if not client.should_query_keys:
        return
    try:
        await checked(client.keys_query(), "keys query")
    except (LocalProtocolError, SourceError) as exc:  # the sync loop's own query got there first, or refused
        log.info("matrix spool: device keys not queried before recording", extra={"reason": str(exc)})


class MatrixSource:
    """One bot account on one homeserver (see module docstring)."""

    def __init__(
        self, cfg: MatrixSourceConfig, sink: Sink, blobs: BlobSink | None = None, spool_sink: Sink | None = None
    ) -> None:
        if not cfg.pickle_key:
            raise ValueError("pickle_key must come from the key material; an empty key is refused")
        if (cfg.spool_dir is None) != (cfg.spool_key is None) or (cfg.spool_dir is not None and spool_sink is None):
            raise ValueError("spool_dir needs spool_key and a spool_sink (its own cursor)")
        self.cfg = cfg
        self.sink = sink
        self.spool_sink = spool_sink
        self.blobs = blobs
        #: The committed resume state (loaded from the sink on every connect).
        self._state = SourceState()
        #: An old side file folded into `_state`, deleted once a commit holds its content.
        self._legacy: Path | None = None
        self._bridges = BridgeTracker()
        #: Set once the first sync batch is committed (tests and health checks wait on it).
        self.synced = asyncio.Event()
        self._commits = 0
        #: An outage not yet recorded in the log.
        self._outage: Outage | None = None
        #: Holes in rooms' histories (see `watch`; rebuilt from the committed heads on every connect).
        self._watch = HoleWatch()
        #: Tombstones seen since the last sync batch was committed (a backfill page may hold one).
        self._tombstones: list[tuple[str, Tombstone]] = []
        #: Spooled events the sync loop has still to bring (`confirm`); None without a spool.
        self._confirm = Confirmations(cfg.spool_confirm_seconds) if cfg.spool_dir is not None else None
        #: Debug timing per sync batch (`timing`): None unless the bench sets its environment variable.
        self._timer = SyncTimer.from_env()

    # -- lifecycle -------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Capture until `stop` is set (see module docstring for what propagates)."""
        backoff = Backoff(self.cfg.backoff_initial, self.cfg.backoff_max)
        while not stop.is_set():
            commits_before = self._commits
            try:
                await self._run_connected(stop)
            except MatrixLoginError:
                raise
            except SourceError as exc:
                if self._commits > commits_before:
                    backoff.reset()  # it worked for a while: a fresh outage
                if self._outage is None:
                    self._outage = Outage(now_ms(), str(exc))
                    log.warning("matrix homeserver unreachable; capture waits and reconnects", extra={
                        "homeserver": self.cfg.homeserver, "reason": str(exc)})  # fmt: skip
                delay = backoff.next()
                log.warning("matrix source retries", extra={"error": str(exc), "delay_s": round(delay, 1)})
                if await wait(stop, delay):
                    return
                continue
            return

    async def _run_connected(self, stop: asyncio.Event) -> None:
        client = _new_client(self.cfg, self._timer)
        spool_stop = asyncio.Event()
        spool: asyncio.Task[None] | None = None
        try:
            await _open_device(client, self.cfg)
            spool = self._start_spool(client, spool_stop)
            self._state = decode(await self.sink.load_cursor())
            if self._state.token is not None and self._state.device != client.device_id:
                await self._catch_up_to_device(client)
            await self._watch.connect(client, self._state.heads)
            self._tombstones = []
            self._migrate_legacy_file()
            cursor = self._state.token
            first = True
            while not stop.is_set():
                response = await self._sync(client, cursor, first, stop)
                if response is None:
                    return
                cursor = await self._handle(client, response, cursor)
                if first and self.cfg.rooms:
                    await join_configured(client, set(self.cfg.rooms))
                first = False
                await maintain_keys(client)
                if spool is not None and spool.done():
                    spool.result()  # the spool reader failed (storage gave up): stop like a failing sync commit
        finally:
            spool_stop.set()
            if spool is not None:
                try:
                    await spool
                finally:
                    await close_quietly(client)
            else:
                await close_quietly(client)

    def _start_spool(self, client: RawKeepingClient, stop: asyncio.Event) -> asyncio.Task[None] | None:
        directory, key, sink = self.cfg.spool_dir, self.cfg.spool_key, self.spool_sink
        if directory is None or key is None or sink is None:
            return None

        async def to_events(raws: list[dict[str, Any]]) -> tuple[list[Event], dict[int, str]]:
            # As the sync loop: timeline events carry no room_id; normalise, annotate, recover, media.
            kept: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
            refused: dict[int, str] = {}
            for n, raw in enumerate(raws):
                room_id = str(raw.pop("room_id"))
                await _with_prev_content(client, room_id, raw)
                decrypted, refusal = self._spool_decrypted(client, room_id, raw)
                if decrypted is not None:
                    kept.append((room_id, raw, decrypted))
                elif refusal is not None:
                    refused[n] = refusal
            if any(decrypted for _, _, decrypted in kept):
                await _query_new_devices(client)
            events = [self._bridges.annotate(self._normalise(client, *item)) for item in kept]
            events = [self._bridges.annotate(await recover_original(client, e)) for e in events]
            return await self._with_media(client, events), refused

        account = self.cfg.user_id or self.cfg.homeserver
        confirm = self._confirm
        if confirm is not None:
            try:
                confirm.connected(end_of(directory))
            except OSError:  # the tail says so (ALERT) and retries; what it reads then is not checked
                confirm.connected(None)
        spool = tail(
            directory, key, sink, account, to_events, stop, self.cfg.spool_poll_seconds,
            on_committed=confirm.spooled if confirm is not None else None,
        )  # fmt: skip
        return asyncio.create_task(spool, name="matrix-spool")

    def _spool_decrypted(
        self, client: RawKeepingClient, room_id: str, raw: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, str | None]:
        """What `_normalise` needs to store a spooled event as the sync loop would: {} for a clear event, the
        decryption of an encrypted one by the Megolm sessions the bot holds now; else None and why the frame is
        refused, or None and None when the bot holds no key that decrypts it (the room key has not come yet).
        Then the spool leaves the event to the sync loop, which brings it with its key, requests a missing one
        and records it undecryptable if need be. Storing it undecryptable from the spool instead would make the
        log keep that copy and drop the sync loop's decrypted one as a duplicate. Refused: a replay (a Megolm
        message the bot decrypted before, sealed again under another event id: only an insider who can write
        the spool does that), kept as a notice with an ALERT by the spool reader."""
        if raw.get("type") != crypto.ENCRYPTED_TYPE:
            return {}, None
        plain, why = crypto.decrypt_one(client, room_id, raw)
        if plain is None:
            if why == crypto.REPLAYED:
                return None, why
            log.info(
                "matrix spool: encrypted event left to the sync loop",
                extra={"room_id": room_id, "event_id": raw.get("event_id"), "reason": why},
            )
            return None, None
        return {str(raw.get("event_id")): plain}, None

    async def _catch_up_to_device(self, client: RawKeepingClient) -> None:
        """Collect this device's queued to-device messages (room keys) before resuming from a token another
        device of the bot produced (a standby taking over, a new device after a lost session).

        Why: a sync token carries the to-device position of the device that asked for it, and Synapse deletes a
        device's to-device messages up to the `since` it is given. Resumed from the other device's token, this
        device's first sync would delete the room keys senders shared with it while it waited, unread: every
        message of those Megolm sessions would be stored undecryptable. So first sync for to-device only (no
        rooms), from the start of this device's queue, until a response brings none: that last sync (with the
        previous round's token) also deletes what was delivered, so resuming from the older token does not hand
        the same messages over twice. Nothing is committed: the cursor stays the one the log holds, and a crash
        here repeats the catch-up.
        """
        token: str | None = None
        collected = 0
        for _ in range(_CATCH_UP_ROUNDS):
            client.next_batch = token
            response = await checked(
                client.sync(timeout=0, sync_filter=_TO_DEVICE_ONLY, since=token), "sync (to-device catch-up)"
            )
            await maintain_keys(client)
            got = len(getattr(response, "to_device_events", None) or ())
            collected += got
            token = str(response.next_batch)
            if got == 0:
                break
        else:
            log.error(
                "ALERT matrix: this device's to-device queue did not run dry; room keys past it may be deleted"
                " unread and their messages stored undecryptable (flagged)",
                extra={"device": client.device_id, "messages": collected},
            )
        log.info(
            "matrix: collected this device's to-device messages before resuming another device's sync token",
            extra={"device": client.device_id, "previous_device": self._state.device or "unknown",
                   "messages": collected},
        )  # fmt: skip

    async def _sync(self, client: RawKeepingClient, cursor: str | None, first: bool, stop: asyncio.Event) -> Any:
        """One /sync, abandoned (nothing processed) if `stop` is set meanwhile."""
        # nio skips a response whose next_batch equals its own: keep it in step with
        # the committed cursor so a replayed batch is decrypted again.
        client.next_batch = cursor
        sync_filter = _sync_filter(self.cfg.timeline_limit)
        call = checked(
            client.sync(
                timeout=0 if first else self.cfg.sync_timeout_ms,
                sync_filter=sync_filter,
                since=cursor,
                # Full state once per connection: nio learns every room's members
                # (needed to track devices and share keys) after a restart.
                full_state=first and cursor is not None,
            ),
            "sync",
        )
        if self._timer is not None:
            self._timer.start()
        sync_task = asyncio.ensure_future(call)
        stop_task = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({sync_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_task.cancel()
            if not sync_task.done():
                sync_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sync_task
        if not sync_task.done() or sync_task.cancelled():
            return None
        return sync_task.result()

    # -- one sync batch --------------------------------------------------------

    async def _handle(self, client: RawKeepingClient, response: Any, cursor: str | None) -> str:
        body: dict[str, Any] | None = getattr(response, "raw_body", None)
        if body is None:  # never advance the cursor over events we did not read
            raise SourceError("sync response without its raw body (nio changed create_matrix_response?)")
        rules = Rules(client.user_id, self.cfg.allowed_inviters, self.cfg.rooms)
        todo = plan(body, SyncState(cursor, self._state.backfilled, bool(self._state.pending)), rules)
        await handle_invites(client, todo.invites)
        batch = _Batch([], [], [], [])
        for room in todo.rooms:
            nio_rooms = response.rooms.join if room.joined else response.rooms.leave
            await self._collect_room(client, batch, room, nio_rooms.get(room.room_id))
        if todo.retry_late:
            await self._collect_late(client, batch)
        await self._follow_upgrades(client, batch)
        if self._outage is not None:
            batch.events.append(self._gap_notice(self._outage))
        if self._confirm is not None:
            self._question_unconfirmed(batch)
        if self._timer is not None:
            self._timer.mark("normalised")
        await self._commit(client, batch, response.next_batch)
        if self._timer is not None:
            self._timer.flush(e.event_id for e in batch.events)
        self._watch.batch_done()
        self._outage = None
        self.synced.set()
        return str(response.next_batch)

    async def _commit(self, client: RawKeepingClient, batch: _Batch, token: str | None) -> None:
        """Fetch media, commit the events with the state they lead to, then ask for missing keys.

        `token=None` (a backfill page) keeps the sync token; the cursor is then passed only when the state
        changed (or a side file awaits its move), so an unchanged cursor is not rewritten page by page.
        """
        events = [self._bridges.annotate(await recover_original(client, e)) for e in batch.events]
        events = await self._with_media(client, events)
        state = self._state.after(
            token=token,
            backfilled=batch.backfilled,
            pending=[
                p
                for e in events
                if e.kind is Kind.UNDECRYPTABLE and (p := pending_event(e.event_id, e.conversation, e.raw))
            ],
            resolved=batch.resolved,
            # heads move with the sync token only: a backfill page keeps the stored cursor (a crash re-fetches the
            # gap, whose events connect to the heads of the last batch)
            heads=self._watch.heads() if token is not None else None,
            device=client.device_id,
        )
        changed = token is not None or state != self._state or self._legacy is not None
        if self._timer is not None:
            self._timer.mark("queued")
        await self.sink.commit(events, encode(state) if changed else None)
        if self._timer is not None:
            self._timer.mark("durable")
        self._state = state
        self._commits += 1
        self._drop_legacy_file()
        await crypto.request_keys(client, batch.undecrypted)

    def _question_unconfirmed(self, batch: _Batch) -> None:
        """Record an ALERT notice for each spooled event the sync loop has not brought in time (`confirm`: it may
        not come from the homeserver); what the loop brings is confirmed as it is read (`_add_events`)."""
        confirm = self._confirm
        assert confirm is not None
        confirm.batch_done()
        for item, waited in confirm.overdue():
            log.error(
                "ALERT matrix spool: an event came only through the spool; the homeserver's sync never brought it"
                " (a frame sealed by someone else?); kept, and questioned by a notice in its room",
                extra={"room_id": item.room_id, "event_id": item.event_id, "spool_file": item.file,
                       "spool_offset": item.offset, "waited_s": round(waited)},
            )  # fmt: skip
            batch.events.append(unconfirmed_notice(item, waited))
        if shed := confirm.shed():
            log.error(
                "ALERT matrix spool: too many spooled events wait for the sync loop; the oldest are no longer checked",
                extra={"not_checked": shed},
            )

    async def _collect_room(self, client: RawKeepingClient, batch: _Batch, room: RoomPlan, nio_room: Any) -> None:
        """Carry out one room's plan: learn bridge state, backfill, then queue the events to store."""
        nio_events = list(nio_room.timeline.events) if nio_room is not None else []
        decrypted = crypto.decrypted_by_id(nio_events)
        undecrypted = crypto.undecrypted_by_id(nio_events)
        self._bridges.learn_state(room.room_id, list(room.learn))
        before_ms = self._watch.holes.last_ts(room.room_id)
        limited_gap = room.backfill is not None and room.backfill.since is not None
        if room.joined and (self._watch.seam or limited_gap):
            first = next(
                (r for r in room.store if isinstance(r, dict) and r.get("event_id") in room.timeline_ids), None
            )
            await self._watch.at_seam(client, room.room_id, first)
        unfilled = None
        if room.backfill is not None:
            unfilled = await self._backfill(client, room.room_id, room.backfill)
        if room.mark_backfilled:
            batch.backfilled.append(room.room_id)
        self._add_events(client, batch, room.room_id, room.store, decrypted, undecrypted, room.timeline_ids)
        if (notice := self._watch.notice(room.room_id, unfilled, before_ms)) is not None:
            batch.events.append(notice)

    def _add_events(
        self,
        client: RawKeepingClient,
        batch: _Batch,
        room_id: str,
        raws: Sequence[object],
        decrypted: dict[str, Any],
        undecrypted: dict[str, MegolmEvent],
        checked: frozenset[str] | None = frozenset(),
    ) -> None:
        """Normalise `raws` into `batch` (once per event id), noting what did not decrypt; every event is
        seen by the hole detector, the ids in `checked` (all, for `ALL`) checked against it; None: neither
        (a left room)."""
        seen: set[str] = set()
        for raw in raws:
            if checked is not None and isinstance(raw, dict):
                self._watch.see(room_id, raw, checked is _ALL or raw.get("event_id") in checked)
                if (tomb := tombstone(raw)) is not None:
                    self._tombstones.append((room_id, tomb))
            event_id = raw.get("event_id") if isinstance(raw, dict) else None
            if isinstance(event_id, str):
                if event_id in seen:
                    continue
                seen.add(event_id)
            if isinstance(raw, dict):
                self._bridges.learn(room_id, raw)
            batch.events.append(self._bridges.annotate(self._normalise(client, room_id, raw, decrypted)))
            if (link := back_link(room_id, raw, now_ms())) is not None:
                batch.events.append(link)
            if isinstance(event_id, str) and event_id in undecrypted and event_id not in decrypted:
                batch.undecrypted.append(undecrypted[event_id])
        if self._confirm is not None:  # the homeserver brought these: spooled copies are confirmed
            self._confirm.synced(seen)

    async def _backfill(self, client: RawKeepingClient, room_id: str, gap: Backfill) -> str | None:
        """Commit the gap before `gap.until` page by page, oldest first, leaving the cursor alone.

        Returns why a known room's gap could not be filled (None: filled): `EMPTY` when /messages gave no
        event for a `limited` gap (a hole only if prev_events show one), or the refusal's errcode."""
        total = 0
        try:
            async for page in gap_pages(client, room_id, gap.since, gap.until, self.cfg.backfill_page):
                if total == 0 and gap.since is not None:
                    await self._watch.at_seam(client, room_id, page.events[0] if page.events else None)
                batch = _Batch([], [], [], [])
                self._add_events(client, batch, room_id, page.events, page.decrypted, page.undecrypted, _ALL)
                await self._commit(client, batch, None)
                total += len(page.events)
        except MatrixRequestError as exc:
            if exc.errcode in _TRANSIENT:
                raise
            log.warning("backfill refused; the hole is recorded", extra={"room_id": room_id, "errcode": exc.errcode})
            return f"messages refused: {exc.errcode}"
        log.info("backfilled", extra={"room_id": room_id, "events": total})
        return EMPTY if total == 0 and gap.since is not None else None

    async def _follow_upgrades(self, client: RawKeepingClient, batch: _Batch) -> None:
        """Follow every room upgraded in this batch (see `follow`); what it records joins the batch."""
        todo, self._tombstones = self._tombstones, []
        for old_room, tomb in todo:
            notice = await follow_upgrade(client, old_room, tomb, _TRANSIENT)
            if notice is not None:
                batch.events.append(notice)

    def _normalise(self, client: RawKeepingClient, room_id: str, raw: object, decrypted: dict[str, Any]) -> Event:
        if not isinstance(raw, dict):
            return normalise(raw, room_id=room_id, received_at=now_ms())
        event_id = raw.get("event_id")
        if raw.get("type") == crypto.ENCRYPTED_TYPE and event_id in decrypted:
            plain = decrypted[event_id]
            return normalise(
                crypto.merge_decrypted(raw, plain),
                room_id=room_id,
                received_at=now_ms(),
                decryption=crypto.evidence(client, {**raw, "room_id": room_id}, plain),
            )
        return normalise(raw, room_id=room_id, received_at=now_ms())

    async def _collect_late(self, client: RawKeepingClient, batch: _Batch) -> None:
        """Queue the late decryptions of pending events whose key arrived; settle every one tried."""
        for late in await late_decryptions(client, self._state.pending):
            event_id, room_id = late.pending.event_id, late.pending.room_id
            batch.resolved.append(event_id)
            if late.merged is None:
                continue
            event = normalise(
                late.merged,
                room_id=room_id,
                received_at=now_ms(),
                decryption={**(late.evidence or {}), "late": True, "first_record": event_id},
            )
            batch.events.append(
                replace(
                    event,
                    event_id=EventId(event_id + crypto.LATE_SUFFIX),
                    relates_to=event.relates_to or EventId(event_id),
                )
            )
            log.info("late decryption", extra={"event_id": event_id, "room_id": room_id})

    async def _with_media(self, client: RawKeepingClient, events: list[Event]) -> list[Event]:
        if self.blobs is None:
            return events
        fetcher = MediaFetcher(client.client_session, self.cfg.homeserver, client.access_token)
        return [await fetch_attachments(fetcher, e, self.blobs, self.cfg.max_media_bytes) for e in events]

    def _gap_notice(self, outage: Outage) -> Event:
        """The record of an outage, committed with the first sync batch after it."""
        end = now_ms()
        log.warning("matrix homeserver reachable again; outage recorded", extra={"gap_ms": end - outage.start_ms})
        conversation = ConversationId(f"notice:matrix:{self.cfg.user_id or self.cfg.homeserver}")
        return gap_notice(MATRIX, conversation, outage, end, {"homeserver": self.cfg.homeserver})

    def _migrate_legacy_file(self) -> None:
        """Fold an old `source_state.json` into the state; the next commit stores it, then the file goes."""
        path = self.cfg.store_dir / LEGACY_FILE
        if not path.exists():
            return
        try:
            legacy = orjson.loads(path.read_bytes())
            if not isinstance(legacy, dict):
                raise TypeError("not a JSON object")
            self._state = migrate_legacy(self._state, legacy)
        except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
            raise DataError(f"{path} cannot be read ({exc}); move it away to start without it") from None
        self._legacy = path
        log.info("moving the old source state file into the log", extra={"path": str(path)})

    def _drop_legacy_file(self) -> None:
        if self._legacy is None:
            return
        os.unlink(self._legacy)
        fsync_dir(self._legacy.parent)
        log.info("old source state file moved into the log and deleted", extra={"path": str(self._legacy)})
        self._legacy = None
