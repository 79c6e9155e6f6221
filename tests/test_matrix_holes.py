"""Holes the Matrix source can see (bridge/sources/matrix/holes.py, wired in source.py): prev_events the bot never
saw, limited syncs it could not fill. Pure detector tests, then against a real Synapse: a normal run with a
limited sync after downtime records no gap; history purged on the server while the bot was away records one."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.dev.synapse import SynapseServer
from bridge.events import Event, Kind
from bridge.sources.matrix.holes import Holes, notice_detail
from bridge.sources.matrix.state import RoomHeads, SourceState, decode, encode
from tests.support.officials import OfficialFactory, ok, poll_until, unique_name
from tests.test_matrix_source import Bot, MemorySink, bot, wait_event

__all__ = ["bot"]

ROOM = "!room:example.org"


def chain(n: int, start: int = 0) -> list[dict[str, Any]]:
    """A linear room history: event i points at event i-1."""
    return [
        {
            "event_id": f"$e{i}",
            "type": "m.room.message",
            "origin_server_ts": 1_000 + i,
            "prev_events": [f"$e{i - 1}"] if i else [],
        }
        for i in range(start, start + n)
    ]


def restart(holes: Holes) -> Holes:
    """What a restart keeps: the heads, through the committed state document."""
    state = decode(encode(SourceState(token="t", heads=holes.heads())))
    return Holes(state.heads)


@given(st.integers(min_value=1, max_value=60), st.sets(st.integers(min_value=0, max_value=59)))
def test_a_complete_history_has_no_hole_whatever_the_restarts(n: int, restarts: set[int]) -> None:
    """Every event of a linear history fed in order, with restarts anywhere: no hole is ever reported."""
    holes = Holes()
    for i, raw in enumerate(chain(n)):
        if i in restarts:
            holes = restart(holes)
        assert holes.see(ROOM, raw) is None
    assert holes.take(ROOM) == []


@given(st.integers(min_value=3, max_value=60), st.data())
def test_a_missing_run_of_events_is_one_hole_with_its_span(n: int, data: st.DataObject) -> None:
    """Events a..b of a history never reach the bot: exactly one hole, at event b+1, naming event b, spanning
    from event a-1's time to event b+1's."""
    a = data.draw(st.integers(min_value=1, max_value=n - 2))
    b = data.draw(st.integers(min_value=a, max_value=n - 2))
    holes = Holes()
    for raw in chain(n):
        i = int(raw["event_id"][2:])
        if not a <= i <= b:
            holes.see(ROOM, raw)
    found = holes.take(ROOM)
    assert len(found) == 1
    hole = found[0]
    assert hole.event_id == f"$e{b + 1}" and hole.missing == (f"$e{b}",)
    assert (hole.start_ms, hole.end_ms) == (1_000 + a - 1, 1_000 + b + 1)
    assert holes.take(ROOM) == []


def test_the_first_event_of_a_room_and_unchecked_state_are_never_holes() -> None:
    """A room's first visible event points before the bot's view by nature; state-section events (unchecked)
    point anywhere: neither is a hole, and both become known."""
    holes = Holes()
    assert holes.see(ROOM, chain(1, start=40)[0]) is None
    old_state = {"event_id": "$state", "type": "m.room.name", "prev_events": ["$ancient"], "origin_server_ts": 5}
    assert holes.see(ROOM, old_state, check=False) is None
    assert holes.see(ROOM, chain(1, start=41)[0]) is None
    assert holes.take(ROOM) == []


def member(event_id: str, membership: str, ts: int, user: str = "@bot:example.org") -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "m.room.member",
        "state_key": user,
        "content": {"membership": membership},
        "origin_server_ts": ts,
    }


def test_the_bots_absence_from_a_room_is_one_hole_across_a_restart() -> None:
    """Kicked at 10, back at 50 (with a restart in between): one archiver_not_in_room hole spanning 10..50;
    someone else's leave and join make none."""
    holes = Holes(user_id="@bot:example.org")
    holes.see(ROOM, chain(1)[0])
    holes.see(ROOM, member("$other-leave", "leave", 5, user="@alice:example.org"))
    holes.see(ROOM, member("$other-join", "join", 6, user="@alice:example.org"))
    holes.see(ROOM, member("$kick", "leave", 10))
    assert holes.take(ROOM) == []
    holes = Holes(decode(encode(SourceState(token="t", heads=holes.heads()))).heads, "@bot:example.org")
    holes.see(ROOM, member("$invite", "invite", 40))
    hole = holes.see(ROOM, member("$join", "join", 50))
    assert hole is not None and (hole.kind, hole.start_ms, hole.end_ms) == ("archiver_not_in_room", 10, 50)
    assert holes.take(ROOM) == [hole]
    assert notice_detail([hole], "messages gave no event")[0] == "archiver_not_in_room"
    assert notice_detail([], "messages refused: M_FORBIDDEN")[0] == "limited_sync_unfilled"


def test_a_state_document_without_heads_still_decodes() -> None:
    """A cursor written before heads existed decodes with none; heads round-trip through the document."""
    old = encode(SourceState(token="s1"))
    assert "heads" not in old and decode(old).heads == {}
    state = SourceState(token="s2", heads={ROOM: RoomHeads(("$a", "$b"), 7)})
    assert decode(encode(state)) == state


# -- against a real Synapse -------------------------------------------------------------------------------------


def gaps_in(sink: MemorySink, room_id: str) -> list[Event]:
    return [e for e in sink.in_room(room_id, Kind.NOTICE) if e.content.get("notice") == "capture_gap"]


@pytest.fixture
async def admin_bot(synapse: SynapseServer, tmp_path: Path) -> AsyncIterator[Bot]:
    """The archive bot's account as a Synapse server admin: prev_events are checked at the seams (admin API)."""
    name = unique_name("adminbot")
    user_id, _ = await synapse.register_user_async(name, f"pw-{name}", admin=True)
    password_file = tmp_path / "admin-bot.password"
    password_file.write_text(f"pw-{name}")
    password_file.chmod(0o600)
    robot = Bot(synapse, user_id, password_file, tmp_path / "admin-bot-store")
    try:
        yield robot
    finally:
        await robot.stop()


async def purge_before(synapse: SynapseServer, room_id: str, event_id: str) -> None:
    """Synapse's admin purge (as a separate admin): every event of the room before `event_id` is deleted."""
    name = unique_name("purger")
    _, token = await synapse.register_user_async(name, f"pw-{name}", admin=True)
    body = {"delete_local_events": True, "purge_up_to_event_id": event_id}
    path = f"/_synapse/admin/v1/purge_history/{urllib.parse.quote(room_id)}"
    purge_id = (await asyncio.to_thread(synapse._request, "POST", path, body, token))["purge_id"]

    async def done() -> bool:
        status_path = f"/_synapse/admin/v1/purge_history_status/{purge_id}"
        status = await asyncio.to_thread(synapse._request, "GET", status_path, None, token)
        assert status["status"] != "failed", status
        return bool(status["status"] == "complete")

    await poll_until(done, timeout=30)


@pytest.mark.synapse
@pytest.mark.parametrize("as_admin", [False, True], ids=["plain-bot", "admin-bot"])
async def test_downtime_with_a_limited_sync_that_backfill_fills_records_no_gap(
    bot: Bot, admin_bot: Bot, official: OfficialFactory, as_admin: bool
) -> None:
    """The bot stops, 30 messages arrive, it restarts with a 5-event timeline: the limited sync is backfilled
    through /messages, every message is captured and no capture_gap is recorded for the room (no false gap),
    also when the bot is a server admin and checks prev_events at every seam."""
    bot = admin_bot if as_admin else bot
    alice = await official("alice")
    bot.allowed = frozenset({alice.user_id})
    sink = MemorySink()
    await bot.start(sink, timeline_limit=5)
    room_id = await alice.create_room(encrypted=False, invite=[bot.user_id])
    await alice.wait_member(room_id, bot.user_id)
    await wait_event(sink, await alice.send_text(room_id, "voor de stop"))
    await bot.stop()
    sent = [await alice.send_text(room_id, f"tijdens {i}") for i in range(30)]
    await bot.start(sink, timeline_limit=5)
    await wait_event(sink, await alice.send_text(room_id, "weer terug"))
    assert all(sink.find(e) is not None for e in sent)
    assert gaps_in(sink, room_id) == []


@pytest.mark.synapse
async def test_history_purged_on_the_server_while_the_bot_was_away_is_one_gap(
    admin_bot: Bot, official: OfficialFactory, synapse: SynapseServer
) -> None:
    """While the (admin) bot is away, 8 messages are sent and the first 6 purged from the server (admin API).
    The sync after the restart is not even limited, but the first event's prev_events (fetched through the admin
    API) name the purged 6th, which the bot never saw: one capture_gap notice in the room, reason
    prev_events_unseen, spanning from the last message it saw to the 7th; the 7th and 8th are captured."""
    bot = admin_bot
    alice = await official("alice")
    bot.allowed = frozenset({alice.user_id})
    sink = MemorySink()
    await bot.start(sink)
    room_id = await alice.create_room(encrypted=False, invite=[bot.user_id])
    await alice.wait_member(room_id, bot.user_id)
    last_seen = await wait_event(sink, await alice.send_text(room_id, "laatste die de bot zag"))
    await bot.stop()
    sent = [await alice.send_text(room_id, f"tijdens {i}") for i in range(8)]
    await purge_before(synapse, room_id, sent[6])
    await bot.start(sink)
    await wait_event(sink, await alice.send_text(room_id, "weer terug"))

    seventh = sink.find(sent[6])
    assert seventh is not None and sink.find(sent[7]) is not None
    assert all(sink.find(e) is None for e in sent[:6])
    gaps = gaps_in(sink, room_id)
    assert len(gaps) == 1, [g.content for g in gaps]
    gap = gaps[0].content
    assert gap["reason"] == "prev_events_unseen", sorted(gap.items())
    assert gap["first_event_after"] == sent[6]
    assert gap["prev_events_unseen"] == [sent[5]]
    assert (gap["gap_start_ms"], gap["gap_end_ms"]) == (last_seen.sent_at, seventh.sent_at)


@pytest.mark.synapse
async def test_the_span_the_archiver_was_kicked_out_is_recorded_as_one_gap(bot: Bot, official: OfficialFactory) -> None:
    """History visible to members only (`joined`); the bot, running throughout, is kicked, three messages are
    sent, it is invited back and rejoins. One capture_gap notice in the room's conversation: reason
    archiver_not_in_room, spanning the kick to the rejoin; the messages of that span never reached it; the
    messages after it are captured; no other gap."""
    alice = await official("alice")
    bot.allowed = frozenset({alice.user_id})
    sink = MemorySink()
    await bot.start(sink)
    room_id = await alice.create_room(encrypted=False, invite=[bot.user_id])
    await alice.wait_member(room_id, bot.user_id)
    ok(await alice.client.room_put_state(room_id, "m.room.history_visibility", {"history_visibility": "joined"}))
    await wait_event(sink, await alice.send_text(room_id, "voor de kick"))
    ok(await alice.client.room_kick(room_id, bot.user_id, reason="even weg"))
    kicked = await poll_own_membership(sink, room_id, bot.user_id, "leave")
    hidden = [await alice.send_text(room_id, f"zonder archief {i}") for i in range(3)]
    ok(await alice.client.room_invite(room_id, bot.user_id))
    await alice.wait_member(room_id, bot.user_id)
    after = await wait_event(sink, await alice.send_text(room_id, "weer binnen"))
    rejoined = await poll_own_membership(sink, room_id, bot.user_id, "join", after=kicked.sent_at)

    assert all(sink.find(e) is None for e in hidden)
    assert after.kind is Kind.MESSAGE
    gaps = gaps_in(sink, room_id)
    assert len(gaps) == 1, [g.content for g in gaps]
    gap = gaps[0].content
    assert gap["reason"] == "archiver_not_in_room", sorted(gap.items())
    assert (gap["gap_start_ms"], gap["gap_end_ms"]) == (kicked.sent_at, rejoined.sent_at)
    assert gap["first_event_after"] == rejoined.event_id


async def poll_own_membership(
    sink: MemorySink, room_id: str, user_id: str, membership: str, after: int | None = None
) -> Event:
    """The bot's own membership event `membership` in the room (the first after `after`), once captured."""

    def find() -> Event | None:
        for e in sink.in_room(room_id, Kind.MEMBERSHIP):
            raw = e.raw or {}
            content = raw.get("content") if isinstance(raw, dict) else None
            if (
                isinstance(content, dict)
                and raw.get("state_key") == user_id
                and content.get("membership") == membership
                and (after is None or (e.sent_at or 0) > after)
            ):
                return e
        return None

    await poll_until(lambda: find() is not None, timeout=20)
    event = find()
    assert event is not None
    return event
