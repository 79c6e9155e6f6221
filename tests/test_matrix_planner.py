"""The pure Matrix sync planner (bridge/sources/matrix/planner.py): decisions of one batch, no homeserver."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bridge.sources.matrix.planner import Backfill, Rules, SyncState, inviter, plan

BOT = "@archief:example.org"
OFFICIAL = "@official:example.org"
RULES = Rules(BOT, frozenset({OFFICIAL}), frozenset({"!configured:example.org"}))


def _msg(event_id: str) -> dict[str, Any]:
    return {"type": "m.room.message", "event_id": event_id, "sender": OFFICIAL, "content": {"body": "x"}}


def _state(event_id: str) -> dict[str, Any]:
    return {"type": "m.room.name", "state_key": "", "event_id": event_id, "content": {"name": "n"}}


def _room(*events: dict[str, Any], state: list[dict[str, Any]] | None = None, **timeline: Any) -> dict[str, Any]:
    return {"state": {"events": state or []}, "timeline": {"events": list(events), **timeline}}


def _invite(sender: str, target: str = BOT) -> dict[str, Any]:
    member = {"type": "m.room.member", "state_key": target, "sender": sender, "content": {"membership": "invite"}}
    return {"invite_state": {"events": [member]}}


def test_new_room_is_backfilled_from_the_start_and_its_state_stored() -> None:
    """A room never backfilled: backfill (None, prev_batch), store state then timeline, mark it afterwards."""
    body = {"rooms": {"join": {"!a:x": _room(_msg("$2"), state=[_state("$1")], prev_batch="p1")}}}
    (room,) = plan(body, SyncState("s0", set()), RULES).rooms
    assert room.joined and room.mark_backfilled
    assert room.backfill == Backfill(None, "p1")
    assert [e["event_id"] for e in room.store] == ["$1", "$2"]  # type: ignore[index]
    assert room.learn == (_state("$1"),)


def test_known_room_limited_timeline_is_backfilled_from_the_cursor() -> None:
    """A known room with a limited timeline: backfill (cursor, prev_batch); its state is learned, not stored."""
    body = {"rooms": {"join": {"!a:x": _room(_msg("$2"), state=[_state("$1")], prev_batch="p1", limited=True)}}}
    (room,) = plan(body, SyncState("s0", {"!a:x"}), RULES).rooms
    assert room.backfill == Backfill("s0", "p1")
    assert not room.mark_backfilled
    assert room.store == (_msg("$2"),)
    assert room.learn == (_state("$1"),)


def test_known_room_without_a_gap_is_not_backfilled() -> None:
    """Not limited, or limited without a cursor or a prev_batch: nothing to page back to."""
    for timeline, cursor in (({"prev_batch": "p"}, "s0"), ({"prev_batch": "p", "limited": True}, None),
                             ({"limited": True}, "s0")):  # fmt: skip
        body = {"rooms": {"join": {"!a:x": _room(_msg("$1"), **timeline)}}}
        (room,) = plan(body, SyncState(cursor, {"!a:x"}), RULES).rooms
        assert room.backfill is None


def test_new_room_without_prev_batch_is_marked_but_not_backfilled() -> None:
    """A new room whose timeline starts at its creation has no gap, but counts as backfilled after commit."""
    (room,) = plan({"rooms": {"join": {"!a:x": _room(_msg("$1"))}}}, SyncState(None, set()), RULES).rooms
    assert room.backfill is None and room.mark_backfilled


def test_left_rooms_are_archived_only_when_ours() -> None:
    """A left room backfilled before keeps its timeline (no backfill, no state); a never-seen one is skipped."""
    body = {"rooms": {"leave": {"!ours:x": _room(_msg("$1"), state=[_state("$0")], prev_batch="p", limited=True),
                                "!declined:x": _room(_msg("$9"))}}}  # fmt: skip
    todo = plan(body, SyncState("s0", {"!ours:x"}), RULES)
    (room,) = todo.rooms
    assert (room.room_id, room.joined, room.backfill, room.mark_backfilled) == ("!ours:x", False, None, False)
    assert room.store == (_msg("$1"),)
    assert todo.skipped == ("!declined:x",)


def test_invites_are_accepted_from_allowed_inviters_or_for_configured_rooms() -> None:
    """Allowed inviter or configured room: accept; a stranger, another server, a forged target, no inviter: decline."""
    invites = {
        "!ok:example.org": _invite(OFFICIAL),
        "!configured:example.org": _invite("@stranger:example.org"),
        "!stranger:example.org": _invite("@stranger:example.org"),
        "!otherserver:evil.example": _invite("@official:evil.example"),
        "!forged:evil.example": _invite(OFFICIAL, target="@someone-else:example.org"),
        "!nobody:evil.example": {"invite_state": {"events": []}},
    }
    todo = plan({"rooms": {"invite": invites}}, SyncState(None, set()), RULES)
    accepted = {i.room_id for i in todo.invites if i.accept}
    assert accepted == {"!ok:example.org", "!configured:example.org"}
    assert len(todo.invites) == len(invites)
    assert inviter(invites["!forged:evil.example"], BOT) is None


def test_late_decryption_is_retried_only_with_pending_events_and_to_device() -> None:
    """retry_late needs both: undecryptable events waiting and to-device events (room keys) arriving."""
    with_keys = {"to_device": {"events": [{"type": "m.room_key"}]}}
    assert plan(with_keys, SyncState("s", set(), has_pending=True), RULES).retry_late
    assert not plan(with_keys, SyncState("s", set(), has_pending=False), RULES).retry_late
    assert not plan({"to_device": {"events": []}}, SyncState("s", set(), has_pending=True), RULES).retry_late


def test_repeated_event_ids_are_planned_once_and_non_objects_kept() -> None:
    """A state event repeated in the timeline is stored once; a non-object entry stays (stored as unknown)."""
    body = {"rooms": {"join": {"!a:x": _room(_state("$1"), 42, _msg("$2"), state=[_state("$1")])}}}
    (room,) = plan(body, SyncState(None, set()), RULES).rooms
    assert room.store == (_state("$1"), 42, _msg("$2"))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
_ids = st.sampled_from(["!a:x", "!b:x", "!c:x"])
_event = st.fixed_dictionaries({"event_id": st.sampled_from(["$1", "$2", "$3"]), "type": st.just("m.room.message")})
_timeline = st.fixed_dictionaries(
    {"events": st.lists(_event | _json, max_size=4)},
    optional={"prev_batch": st.text(max_size=3) | _json, "limited": st.booleans() | _json},
)
_room_body = st.fixed_dictionaries(
    {"timeline": _timeline, "state": st.fixed_dictionaries({"events": st.lists(_event, max_size=2)})}
)
_rooms = st.fixed_dictionaries(
    {},
    optional={
        "join": st.dictionaries(_ids, _room_body | _json, max_size=3),
        "leave": st.dictionaries(_ids, _room_body | _json, max_size=3),
        "invite": st.dictionaries(_ids, _json, max_size=2),
    },
)
_body = st.fixed_dictionaries({"rooms": _rooms}, optional={"to_device": _json})
_sync_state = st.builds(SyncState, st.none() | st.text(min_size=1, max_size=3), st.sets(_ids), st.booleans())


@given(_body | _json.filter(lambda v: isinstance(v, dict)), _sync_state)
def test_plan_never_raises_and_keeps_its_invariants(body: dict[str, Any], state: SyncState) -> None:
    """For any JSON body: no exception; each joined/left room planned once, never both planned and skipped;
    only new joined rooms are marked; a backfill always has an end token and starts at the cursor or None;
    no event id is planned twice in a room; left rooms are never backfilled."""
    todo = plan(body, state, RULES)
    joined = [r.room_id for r in todo.rooms if r.joined]
    left = [r.room_id for r in todo.rooms if not r.joined]
    assert len(set(joined)) == len(joined) and len(set(left)) == len(left)
    assert not set(left) & set(todo.skipped)
    assert all(room_id not in state.backfilled for room_id in todo.skipped)
    for room in todo.rooms:
        assert room.mark_backfilled == (room.joined and room.room_id not in state.backfilled)
        if room.backfill is not None:
            assert room.joined and isinstance(room.backfill.until, str) and room.backfill.until
            assert room.backfill.since is None if room.mark_backfilled else room.backfill.since == state.cursor
        ids = [e.get("event_id") for e in room.store if isinstance(e, dict) and isinstance(e.get("event_id"), str)]
        assert len(ids) == len(set(ids))


@given(st.lists(st.one_of(_event, _json), max_size=6), _sync_state)
def test_no_timeline_entry_is_dropped(entries: list[Any], state: SyncState) -> None:
    """Every timeline entry of a room is planned for storage, except a repeat of an event id already planned."""
    body = {"rooms": {"join": {"!a:x": {"timeline": {"events": entries}}}}}
    (room,) = plan(body, state, RULES).rooms
    seen: set[str] = set()
    expected = []
    for entry in entries:
        event_id = entry.get("event_id") if isinstance(entry, dict) else None
        if isinstance(event_id, str):
            if event_id in seen:
                continue
            seen.add(event_id)
        expected.append(entry)
    assert list(room.store) == expected
