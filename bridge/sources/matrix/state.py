"""The Matrix source's resume state, stored as its cursor: committed with the events it describes.

Contract (pure; no I/O):
- `SourceState` (frozen) is what the source must know to resume exactly:
  - `token`: the sync token of the last committed batch (None before the first);
  - `backfilled`: rooms whose visible history has been paged in once, so a
    restart does not page every room back to its creation again;
  - `pending`: undecryptable events already in the log, retried when their
    room key arrives, as ids only (`PendingEvent`: event id, room, Megolm
    session, a digest of the ciphertext), oldest first, at most `MAX_PENDING`;
  - `heads`: per room, the newest few event ids the bot stored and the newest
    `origin_server_ts` (`RoomHeads`), so an event whose `prev_events` the bot
    never saw is told apart after a restart too (`holes`). Optional in the
    document: one written before it decodes with no heads.
  - `device`: the Matrix device whose sync produced `token` (None in documents written before it). A sync
    token also carries that device's to-device position, and Synapse deletes a device's to-device messages
    up to the `since` it is given: a different device of the bot (a standby taking over) must first collect
    its own queued room keys before it resumes from the token (`source.MatrixSource._catch_up_to_device`).
- `encode(state)` is a small versioned JSON document; the source hands it to
  `Sink.commit` as the cursor, so it is stored in the transaction of the
  batch it describes, under the cursor's keyed MAC (`bridge.log.store`).
  `decode(cursor)` is its inverse; a bare sync token (a log from before the
  document) decodes to that token with empty state; any other non-document
  raises `DataError` (resuming from a guess could skip or repeat history).
- `SourceState.after(...)` is the state once a batch is committed.
- `migrate_legacy(state, doc)` folds in the `source_state.json` that older
  versions kept beside the log (see `source.MatrixSource` for the one-time move).

Why ids and not raw events: the raw encrypted event is already in the log as
the `undecryptable` record. The late retry fetches it again from the
homeserver by id (`late`), only once nio holds the session's key, and accepts
it only if its ciphertext has the stored digest: the late record decrypts the
very ciphertext the first record holds. Size: about 70 bytes per pending
event plus about 130 per Megolm session (events are grouped by session), so at
most ~200 KB at `MAX_PENDING`, typically well under 1 KB; `backfilled` grows
with the rooms the bot is in.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from bridge.errors import DataError

log = logging.getLogger(__name__)

VERSION = 1
#: The file older versions kept beside nio's store; moved into the cursor once.
LEGACY_FILE = "source_state.json"
#: Bound on remembered undecryptable events; the oldest are forgotten first
#: (they stay in the log as undecryptable; only the late retry is given up).
MAX_PENDING = 1_000
MEGOLM = "m.megolm.v1.aes-sha2"


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An undecryptable event in the log, waiting for the key of its Megolm session."""

    event_id: str
    room_id: str
    sender_key: str
    session_id: str
    #: `ciphertext_digest` of the stored ciphertext.
    digest: str


@dataclass(frozen=True, slots=True)
class RoomHeads:
    """What the committed state remembers of a room: its newest event ids and timestamp."""

    ids: tuple[str, ...]
    last_ts: int | None
    #: When the bot's own membership last became leave or ban (None: it is in the room, or never left).
    left_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SourceState:
    """What the source knows after its last commit (see module docstring)."""

    token: str | None = None
    backfilled: frozenset[str] = frozenset()
    pending: tuple[PendingEvent, ...] = field(default=())
    heads: Mapping[str, RoomHeads] = field(default_factory=dict)
    device: str | None = None

    def after(
        self,
        *,
        token: str | None,
        backfilled: Iterable[str] = (),
        pending: Iterable[PendingEvent] = (),
        resolved: Iterable[str] = (),
        heads: Mapping[str, RoomHeads] | None = None,
        device: str | None = None,
    ) -> SourceState:
        """The state once a batch is committed: `token` (None keeps the current one, and its `device`), rooms
        marked backfilled,
        new pending events added (known ids ignored), `resolved` ones dropped, the oldest forgotten past
        `MAX_PENDING`."""
        done = set(resolved)
        kept = [p for p in self.pending if p.event_id not in done]
        known = {p.event_id for p in kept}
        for item in pending:
            if item.event_id not in known and item.event_id not in done:
                kept.append(item)
                known.add(item.event_id)
        forgotten = kept[: max(0, len(kept) - MAX_PENDING)]
        for item in forgotten:
            log.warning("forgetting undecryptable event: too many pending", extra={"event_id": item.event_id})
        return SourceState(
            self.token if token is None else token,
            self.backfilled | frozenset(backfilled),
            tuple(kept[len(forgotten) :]),
            self.heads if heads is None else heads,
            self.device if token is None else device,
        )


def ciphertext_digest(ciphertext: str) -> str:
    """A short digest of a Megolm ciphertext (128 bits of SHA-256, base64url): enough to tell it apart."""
    return base64.urlsafe_b64encode(hashlib.sha256(ciphertext.encode("utf-8")).digest()[:16]).decode("ascii")


def pending_event(event_id: str, room_id: str, raw: Mapping[str, Any]) -> PendingEvent | None:
    """The pending entry for an undecryptable raw event, or None when it is no Megolm event (no retry can help)."""
    content = raw.get("content")
    if not isinstance(content, dict) or content.get("algorithm") != MEGOLM:
        return None
    fields = [content.get(k) for k in ("sender_key", "session_id", "ciphertext")]
    if not all(isinstance(f, str) and f for f in fields):
        return None
    sender_key, session_id, ciphertext = (str(f) for f in fields)
    return PendingEvent(event_id, room_id, sender_key, session_id, ciphertext_digest(ciphertext))


def encode(state: SourceState) -> str:
    """The state as the versioned cursor document (pending grouped by session, oldest session first)."""
    sessions: dict[tuple[str, str, str], list[list[str]]] = {}
    for p in state.pending:
        sessions.setdefault((p.room_id, p.sender_key, p.session_id), []).append([p.event_id, p.digest])
    doc: dict[str, Any] = {
        "v": VERSION,
        "token": state.token,
        "backfilled": sorted(state.backfilled),
        "pending": [[*key, events] for key, events in sessions.items()],
    }
    if state.heads:
        doc["heads"] = [[room, list(h.ids), h.last_ts, h.left_ms] for room, h in sorted(state.heads.items())]
    if state.device is not None:
        doc["device"] = state.device
    return orjson.dumps(doc).decode("utf-8")


def decode(cursor: str | None) -> SourceState:
    """The state a stored cursor holds (see module docstring); raises `DataError` for a malformed document."""
    if cursor is None:
        return SourceState()
    if not cursor.startswith("{"):
        return SourceState(token=cursor)  # a bare sync token: a log written before the document
    try:
        doc = orjson.loads(cursor)
        if not isinstance(doc, dict) or doc.get("v") != VERSION:
            raise ValueError("unknown version")
        token = doc["token"]
        if token is not None and not isinstance(token, str):
            raise ValueError("token")
        backfilled = frozenset(_strs(doc["backfilled"]))
        pending = []
        for room_id, sender_key, session_id, events in doc["pending"]:
            for event_id, digest in events:
                pending.append(PendingEvent(*_strs([event_id, room_id, sender_key, session_id, digest])))
        heads = {}
        for room_id, ids, last_ts, left_ms in doc.get("heads", []):
            for ts in (last_ts, left_ms):
                if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
                    raise ValueError("heads timestamp")
            heads[str(_strs([room_id])[0])] = RoomHeads(tuple(_strs(ids)), last_ts, left_ms)
        device = doc.get("device")
        if device is not None and not isinstance(device, str):
            raise ValueError("device")
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"the Matrix source's stored state is not a version {VERSION} document ({exc})") from None
    return SourceState(token, backfilled, tuple(pending), heads, device)


def migrate_legacy(state: SourceState, legacy: Mapping[str, Any]) -> SourceState:
    """`state` with the content of an old `source_state.json` folded in (raw pending events become ids)."""
    raw_pending = legacy.get("pending")
    pending = []
    for event_id, item in (raw_pending if isinstance(raw_pending, dict) else {}).items():
        room_id = item.get("room_id") if isinstance(item, dict) else None
        raw = item.get("raw") if isinstance(item, dict) else None
        if isinstance(room_id, str) and isinstance(raw, dict):
            entry = pending_event(str(event_id), room_id, raw)
            if entry is not None:
                pending.append(entry)
    return state.after(token=None, backfilled=_strs(legacy.get("backfilled", [])), pending=pending)


def _strs(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ValueError("expected a list of strings")
    return value
