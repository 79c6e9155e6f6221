"""Room upgrades: the tombstone to follow, and the records that link an upgraded room with its successor (pure).

Contract (pure; no I/O):
- `tombstone(raw)` is the `Tombstone` (replacement room, event id, time) of an `m.room.tombstone` state event
  naming a replacement room, else None. The source joins the replacement on its own (the Synapse module also
  brings the archiver in when an official joins it); the tombstone itself is already a record of the old room,
  the forward link.
- `back_link(room_id, raw, at_ms)` is, for the new room's `m.room.create` naming a `predecessor`, a Kind.NOTICE
  event in the new room's conversation (`content.notice = "room_upgrade"`, `predecessor_room`,
  `predecessor_event`, `create_event`), event id `upgrade-from:<predecessor room>`: the link back, whichever
  way the archiver came in. Stored once (the log's idempotency key).
- `not_followed(old_room, tomb, at_ms, error)` is the `capture_gap` notice in the OLD room's conversation when
  the successor could not be joined (reason `successor_room_not_joined`, the replacement and the refusal):
  nothing said there escapes silently; `chatarchief coverage` lists the new room as uncovered.
- `names_predecessor(create_content, old_room)`: a successor is followed only if its `m.room.create` names the
  old room as `predecessor`. Anyone allowed to send a tombstone could otherwise point the archiver at any room
  it may join (a large public room: other people's chat in the archive). A lure is left again at once and
  recorded in the old room (`lured(...)`: `content.notice = "room_upgrade_refused"`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.events import MATRIX, ConversationId, Event, EventId, Kind, notice

__all__ = ["ROOM_UPGRADE", "Tombstone", "back_link", "lured", "names_predecessor", "not_followed", "tombstone"]

ROOM_UPGRADE = "room_upgrade"
NOT_JOINED = "successor_room_not_joined"


@dataclass(frozen=True, slots=True)
class Tombstone:
    replacement: str
    event_id: str
    at_ms: int | None


def _ts(raw: Mapping[str, Any]) -> int | None:
    ts = raw.get("origin_server_ts")
    return ts if isinstance(ts, int) and not isinstance(ts, bool) else None


def tombstone(raw: object) -> Tombstone | None:
    if not isinstance(raw, dict) or raw.get("type") != "m.room.tombstone" or raw.get("state_key") != "":
        return None
    content = raw.get("content")
    replacement = content.get("replacement_room") if isinstance(content, dict) else None
    event_id = raw.get("event_id")
    if not (isinstance(replacement, str) and replacement.startswith("!") and isinstance(event_id, str)):
        return None
    return Tombstone(replacement, event_id, _ts(raw))


def back_link(room_id: str, raw: object, at_ms: int) -> Event | None:
    if not isinstance(raw, dict) or raw.get("type") != "m.room.create":
        return None
    content = raw.get("content")
    predecessor = content.get("predecessor") if isinstance(content, dict) else None
    old_room = predecessor.get("room_id") if isinstance(predecessor, dict) else None
    if not isinstance(old_room, str) or not isinstance(predecessor, dict):
        return None
    old_event = predecessor.get("event_id")
    return Event(
        source=MATRIX,
        conversation=ConversationId(room_id),
        event_id=EventId(f"upgrade-from:{old_room}"),
        kind=Kind.NOTICE,
        sender=None,
        sent_at=_ts(raw),
        received_at=at_ms,
        content={
            "notice": ROOM_UPGRADE,
            "predecessor_room": old_room,
            "predecessor_event": old_event if isinstance(old_event, str) else None,
            "create_event": raw.get("event_id"),
        },
    )


def not_followed(old_room: str, tomb: Tombstone, at_ms: int, error: str) -> Event:
    start = tomb.at_ms if tomb.at_ms is not None else at_ms
    return notice(
        MATRIX,
        ConversationId(old_room),
        f"gap:upgrade:{tomb.replacement}:{at_ms}",
        at_ms,
        {
            "notice": "capture_gap",
            "gap_start_ms": start,
            "gap_end_ms": at_ms,
            "reason": NOT_JOINED,
            "replacement_room": tomb.replacement,
            "tombstone_event": tomb.event_id,
            "error": error,
        },
    )


def names_predecessor(create_content: object, old_room: str) -> bool:
    predecessor = create_content.get("predecessor") if isinstance(create_content, dict) else None
    return isinstance(predecessor, dict) and predecessor.get("room_id") == old_room


def lured(old_room: str, tomb: Tombstone, at_ms: int) -> Event:
    return notice(
        MATRIX,
        ConversationId(old_room),
        f"upgrade-refused:{tomb.event_id}",
        at_ms,
        {
            "notice": "room_upgrade_refused",
            "replacement_room": tomb.replacement,
            "tombstone_event": tomb.event_id,
            "reason": "the replacement room does not name this room as its predecessor; left again",
        },
    )
