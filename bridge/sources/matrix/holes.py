"""Holes in a room's history that the Matrix source can see, as a pure function of the events it read.

Contract (pure; no I/O, no nio):
- `Holes(heads)` starts from the committed heads (`state.SourceState.heads`: per room, the last few event ids
  the bot stored and the newest `origin_server_ts`), so detection survives a restart.
- `see(room_id, raw, check)` is fed every timeline and backfilled event of a joined room in room order (backfill
  pages first, then the sync timeline). With `check`, an event whose `prev_events` name an event the bot never
  saw in that room is a hole: the homeserver could not or would not hand the bot what came before (history
  purged or not visible, /messages refused, a federation gap). A room with no known event is never checked:
  its first visible event points before the bot's view by nature (history visibility), not through a hole.
  State-section events are seen but never checked (a full-state sync hands out old state whose parents are
  arbitrary). Every event seen joins the room's known ids (at most `MAX_KNOWN` per room in memory).
- The bot's own membership (`user_id`): once it leaves or is kicked or banned from a room (`left_ms`, kept in
  the heads) and later joins again, the span it was not a member is a hole (`Hole.kind = "archiver_not_in_room"`):
  events of that span may be invisible to it (history visibility `joined`), and encrypted ones were never
  shared with it. Fed from the timelines of joined and left rooms alike (the kick arrives in a left room).
- The client-server API hands events out without `prev_events`; the source fetches them through Synapse's admin
  API (`dag`) when the bot is a server admin, for the events at the seams (see `source.MatrixSource`), and passes
  them to `see`.
- `take(room_id)` returns the room's holes found since the last take, and forgets them.
- `heads()` is what the next commit stores: per room, the `HEADS` newest ids and the newest timestamp.

Why three signals: without admin rights the prev_events check has nothing to work on against Synapse (client
format); the membership check and the source's refused or empty backfill of a `limited` timeline are what any
client can see.

A hole is reported with its span: from the newest event the bot had seen in the room (`start_ms`, its
`origin_server_ts`) to the first event after the hole (`end_ms`). Together with the source's `limited`
bookkeeping it becomes one `capture_gap` notice per room and sync batch (`source.MatrixSource`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from bridge.sources.matrix.state import RoomHeads

__all__ = ["HEADS", "MAX_KNOWN", "Hole", "Holes", "notice_detail"]

#: Event ids per room kept in the committed state: `prev_events` name the room's newest events.
HEADS = 3
#: Event ids per room remembered in memory (prev_events of a fork may point a little further back).
MAX_KNOWN = 500
NOT_IN_ROOM = "archiver_not_in_room"
#: Missing ids named in a notice (the rest are counted).
MAX_NAMED = 5


@dataclass(frozen=True, slots=True)
class Hole:
    room_id: str
    #: The first event after the hole (whose prev_events the bot never saw).
    event_id: str
    missing: tuple[str, ...]
    start_ms: int | None
    end_ms: int | None
    kind: str = "prev_events_unseen"


@dataclass
class _Room:
    known: OrderedDict[str, None] = field(default_factory=OrderedDict)
    last_ts: int | None = None
    left_ms: int | None = None
    holes: list[Hole] = field(default_factory=list)


def _ts(raw: Mapping[str, Any]) -> int | None:
    ts = raw.get("origin_server_ts")
    return ts if isinstance(ts, int) and not isinstance(ts, bool) else None


class Holes:
    """Per-room hole detection over the events the source reads (see module docstring)."""

    def __init__(self, heads: Mapping[str, RoomHeads] | None = None, user_id: str | None = None) -> None:
        self._user_id = user_id
        self._rooms: dict[str, _Room] = {}
        #: `heads()` as last computed, and the rooms changed since (only those are computed again).
        self._heads: dict[str, RoomHeads] = dict(heads or {})
        self._dirty: set[str] = set()
        for room_id, h in (heads or {}).items():
            room = self._rooms[room_id] = _Room(last_ts=h.last_ts, left_ms=h.left_ms)
            for event_id in h.ids:
                room.known[event_id] = None

    def has(self, room_id: str, event_id: str) -> bool:
        """Whether the bot has seen `event_id` in the room (among the ids it still remembers)."""
        room = self._rooms.get(room_id)
        return room is not None and event_id in room.known

    def known(self, room_id: str) -> bool:
        """Whether the bot has seen an event of the room (only then can a hole be told)."""
        room = self._rooms.get(room_id)
        return room is not None and bool(room.known)

    def see(
        self, room_id: str, raw: object, check: bool = True, prev_events: Sequence[str] | None = None
    ) -> Hole | None:
        """Feed one event (`prev_events`: its parents when the raw event lacks them, from the admin API)."""
        if not isinstance(raw, dict):
            return None
        event_id = raw.get("event_id")
        if not isinstance(event_id, str):
            return None
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = _Room()
        elif event_id in room.known:
            return None
        self._dirty.add(room_id)
        hole = None
        prev = raw.get("prev_events") if prev_events is None else list(prev_events)
        if check and room.known and isinstance(prev, list):
            missing = tuple(p for p in prev if isinstance(p, str) and p not in room.known)
            if missing:
                hole = Hole(room_id, event_id, missing, room.last_ts, _ts(raw))
                room.holes.append(hole)
        if hole is None:
            hole = self._membership(room, room_id, event_id, raw)
        room.known[event_id] = None  # a new key: appended at the end, the newest
        if len(room.known) > MAX_KNOWN:
            room.known.popitem(last=False)
        ts = _ts(raw)
        if ts is not None and (room.last_ts is None or ts > room.last_ts):
            room.last_ts = ts
        return hole

    def _membership(self, room: _Room, room_id: str, event_id: str, raw: Mapping[str, Any]) -> Hole | None:
        """The bot's own membership: a leave/kick/ban opens a span, the next join closes it as a hole."""
        if raw.get("type") != "m.room.member" or self._user_id is None or raw.get("state_key") != self._user_id:
            return None
        content = raw.get("content")
        membership = content.get("membership") if isinstance(content, dict) else None
        ts = _ts(raw)
        if membership in ("leave", "ban"):
            if room.left_ms is None:
                room.left_ms = ts if ts is not None else room.last_ts
            return None
        if membership != "join" or room.left_ms is None:
            return None
        hole = Hole(room_id, event_id, (), room.left_ms, ts, NOT_IN_ROOM)
        room.left_ms = None
        room.holes.append(hole)
        return hole

    def take(self, room_id: str) -> list[Hole]:
        room = self._rooms.get(room_id)
        if room is None:
            return []
        holes, room.holes = room.holes, []
        return holes

    def last_ts(self, room_id: str) -> int | None:
        room = self._rooms.get(room_id)
        return None if room is None else room.last_ts

    def heads(self) -> dict[str, RoomHeads]:
        for room_id in self._dirty:
            room = self._rooms[room_id]
            ids = tuple(reversed(list(islice(reversed(room.known), HEADS))))
            self._heads[room_id] = RoomHeads(ids, room.last_ts, room.left_ms)
        self._dirty.clear()
        return dict(self._heads)


def notice_detail(holes: list[Hole], unfilled: str | None) -> tuple[str, dict[str, Any]]:
    """The reason and detail of the one notice for a room's holes in a batch (`unfilled`: why a limited sync's
    backfill could not fill it, when it could not)."""
    first = holes[0] if holes else None
    detail: dict[str, Any] = {}
    if first is not None:
        missing = [m for h in holes for m in h.missing]
        detail = {"first_event_after": first.event_id, "holes": len(holes)}
        if missing:
            detail |= {"prev_events_unseen": missing[:MAX_NAMED], "prev_events_unseen_count": len(missing)}
    if unfilled is not None:
        detail["backfill"] = unfilled
    if any(h.kind == NOT_IN_ROOM for h in holes):  # the cause, when the bot itself was out of the room
        return NOT_IN_ROOM, detail
    if unfilled is not None or first is None:
        return "limited_sync_unfilled", detail
    return first.kind, detail
