"""The decisions of one Matrix sync batch, as a pure function: `plan(body, state, rules) -> Plan`.

Contract (pure; no I/O, no nio; never raises for a JSON object, whatever its content):
- `body` is the raw /sync response body (a dict). Sections of the wrong type
  count as absent: the shell keeps the raw events, the planner only decides.
- Invites (`rooms.invite`): accepted when the room is configured
  (`rules.rooms`) or the inviter (the sender of our own `m.room.member` in the
  stripped state) is in `rules.allowed_inviters`; every other invite is
  declined. A forged inviter for another target counts as no inviter.
- Joined rooms (`rooms.join`), in body order:
  - a room not yet backfilled (`state.backfilled`) is backfilled from the
    start of visible history up to its timeline's `prev_batch`, its state
    section is stored (name, encryption, retention, m.bridge: state from
    before the visible history) and it is marked backfilled after the commit;
  - a known room with a `limited` timeline is backfilled from the committed
    cursor to `prev_batch` (only when there is a cursor: on the first sync
    every room is new anyway);
  - without a `prev_batch` there is nothing to page back to: no backfill;
  - `timeline_ids` names the timeline's events, whose `prev_events` the source
    checks for holes (the state section's are not checked).
- Left rooms (`rooms.leave`) are archived (timeline only, no backfill:
  /messages may be forbidden now) when they were backfilled before; a left
  room never seen is skipped (a declined invite: no conversation of ours).
- Every room's state section is handed to the bridge tracker (`learn`), even
  when it is not stored.
- `retry_late` when undecryptable events wait for keys and to-device events
  (which may carry room keys) arrived.
- `store` keeps the order state-then-timeline and drops a repeated event id
  (a later copy of an id already planned in that room); an entry that is not
  a JSON object stays in `store` (stored as `unknown`: nothing is dropped).

Not planned here (the shell keeps them): joining configured rooms after the
first sync of a connection, key maintenance, media, redacted originals, and
which events nio decrypted (that needs nio's Olm state).
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any

__all__ = ["Backfill", "Invite", "Plan", "RoomPlan", "Rules", "SyncState", "inviter", "plan"]


@dataclass(frozen=True, slots=True)
class Rules:
    """The configured part of the decisions."""

    user_id: str
    allowed_inviters: frozenset[str] = frozenset()
    rooms: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class SyncState:
    """What the source knows before this batch."""

    #: The committed sync token this response follows (None on the very first sync).
    cursor: str | None
    backfilled: Set[str]
    has_pending: bool = False


@dataclass(frozen=True, slots=True)
class Invite:
    room_id: str
    inviter: str | None
    accept: bool


@dataclass(frozen=True, slots=True)
class Backfill:
    """Page /messages forwards from `since` (None: the start of visible history) up to `until`."""

    since: str | None
    until: str


@dataclass(frozen=True, slots=True)
class RoomPlan:
    room_id: str
    joined: bool
    #: The gap to commit page by page before this batch's events, if any.
    backfill: Backfill | None
    #: Mark the room backfilled once the batch is committed.
    mark_backfilled: bool
    #: State events for the bridge tracker (stored or not).
    learn: tuple[dict[str, Any], ...]
    #: Raw events to normalise and commit with the batch, in order (a non-object
    #: entry too: the normaliser keeps it as `unknown`).
    store: tuple[object, ...]
    #: Ids of the timeline's events: their prev_events are checked for holes (`holes`); the state section's
    #: events (old state on a full-state sync) are not.
    timeline_ids: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Plan:
    invites: tuple[Invite, ...]
    rooms: tuple[RoomPlan, ...]
    #: Left rooms not archived (never ours).
    skipped: tuple[str, ...]
    retry_late: bool


def plan(body: Mapping[str, Any], state: SyncState, rules: Rules) -> Plan:
    """Decide what one sync batch stores, backfills, accepts and skips (see module docstring)."""
    rooms = _section(body, "rooms")
    invites = tuple(
        _invite(room_id, invite, rules) for room_id, invite in _section(rooms, "invite").items() if _is_dict(invite)
    )
    planned: list[RoomPlan] = []
    for room_id, room in _section(rooms, "join").items():
        if _is_dict(room):
            planned.append(_joined(room_id, room, state))
    skipped: list[str] = []
    for room_id, room in _section(rooms, "leave").items():
        if not _is_dict(room):
            continue
        if room_id not in state.backfilled:
            skipped.append(room_id)
            continue
        planned.append(_left(room_id, room))
    to_device = _events(_section(body, "to_device"))
    return Plan(invites, tuple(planned), tuple(skipped), state.has_pending and bool(to_device))


def inviter(invite: Mapping[str, Any], user_id: str) -> str | None:
    """Who invited us: the sender of our own m.room.member invite in the stripped state."""
    for event in _events(_section(invite, "invite_state")):
        if event.get("type") == "m.room.member" and event.get("state_key") == user_id:
            sender = event.get("sender")
            return sender if isinstance(sender, str) else None
    return None


def _invite(room_id: str, invite: Mapping[str, Any], rules: Rules) -> Invite:
    who = inviter(invite, rules.user_id)
    return Invite(room_id, who, room_id in rules.rooms or who in rules.allowed_inviters)


def _joined(room_id: str, room: Mapping[str, Any], state: SyncState) -> RoomPlan:
    timeline = _section(room, "timeline")
    prev_batch = timeline.get("prev_batch")
    until = prev_batch if isinstance(prev_batch, str) and prev_batch else None
    first = room_id not in state.backfilled
    backfill = None
    if until is not None and first:
        backfill = Backfill(None, until)
    elif until is not None and timeline.get("limited") and state.cursor is not None:
        backfill = Backfill(state.cursor, until)
    room_state = _section(room, "state")
    stored_state = _entries(room_state) if first else []
    learn = tuple(_events(room_state))
    timeline_ids = frozenset(i for e in _events(timeline) if isinstance(i := e.get("event_id"), str))
    store = _unique([*stored_state, *_entries(timeline)])
    return RoomPlan(room_id, True, backfill, first, learn, store, timeline_ids)


def _left(room_id: str, room: Mapping[str, Any]) -> RoomPlan:
    learn = tuple(_events(_section(room, "state")))
    timeline = _section(room, "timeline")
    timeline_ids = frozenset(i for e in _events(timeline) if isinstance(i := e.get("event_id"), str))
    return RoomPlan(room_id, False, None, False, learn, _unique(_entries(timeline)), timeline_ids)


def _unique(raws: list[object]) -> tuple[object, ...]:
    """`raws` in order, without a second event with the same string event id."""
    seen: set[str] = set()
    out: list[object] = []
    for raw in raws:
        event_id = raw.get("event_id") if isinstance(raw, dict) else None
        if isinstance(event_id, str):
            if event_id in seen:
                continue
            seen.add(event_id)
        out.append(raw)
    return tuple(out)


def _is_dict(value: object) -> bool:
    return isinstance(value, dict)


def _section(d: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = d.get(key)
    return value if isinstance(value, dict) else {}


def _entries(section: Mapping[str, Any]) -> list[object]:
    """A section's `events` list as it is (empty when it is not a list)."""
    events = section.get("events")
    return list(events) if isinstance(events, list) else []


def _events(section: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The event objects of a section's `events` list."""
    return [e for e in _entries(section) if isinstance(e, dict)]
