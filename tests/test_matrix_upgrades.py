"""Room upgrades (bridge/sources/matrix/upgrades.py, wired in source.py): the bot follows m.room.tombstone into
the successor room on its own, the Synapse module brings it in too, and both conversations are linked. Against a
real Synapse: an official upgrades a room (`POST /rooms/{id}/upgrade`) and keeps chatting."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import aiohttp
import pytest

from bridge.events import Event, Kind
from bridge.sources.matrix.upgrades import back_link, names_predecessor, not_followed, tombstone
from tests.support.archiver_module import ArchiveBot, archive_bot, login, module_synapse
from tests.support.officials import Official, OfficialFactory, ok, poll_until
from tests.test_matrix_source import Bot, MemorySink, bot, wait_event

__all__ = ["archive_bot", "bot", "module_synapse"]  # fixtures used by name


def tomb_raw(replacement: object = "!new:example.org") -> dict[str, object]:
    return {
        "type": "m.room.tombstone",
        "state_key": "",
        "event_id": "$tomb",
        "origin_server_ts": 10,
        "content": {"body": "This room has been replaced", "replacement_room": replacement},
    }


def test_a_tombstone_names_the_room_to_follow_and_nothing_else_does() -> None:
    """Only a tombstone state event with a room id as replacement is followed."""
    t = tombstone(tomb_raw())
    assert t is not None and (t.replacement, t.event_id, t.at_ms) == ("!new:example.org", "$tomb", 10)
    assert tombstone(tomb_raw(replacement="#alias:example.org")) is None
    assert tombstone(tomb_raw(replacement=None)) is None
    assert tombstone({**tomb_raw(), "state_key": "x"}) is None
    assert tombstone({**tomb_raw(), "type": "m.room.message"}) is None


def test_only_a_room_naming_the_old_one_as_predecessor_is_a_successor() -> None:
    """Pure: the lure check reads the new room's create content."""
    assert names_predecessor({"predecessor": {"room_id": "!old:x", "event_id": "$t"}}, "!old:x")
    assert not names_predecessor({"predecessor": {"room_id": "!other:x"}}, "!old:x")
    assert not names_predecessor({"room_version": "10"}, "!old:x") and not names_predecessor(None, "!old:x")


def test_the_new_rooms_create_event_gives_one_back_link_and_a_refusal_one_gap() -> None:
    """The create event naming a predecessor gives a room_upgrade notice in the new room with a stable id (stored
    once); a refused follow gives a capture_gap notice in the old room naming the replacement."""
    create = {
        "type": "m.room.create",
        "state_key": "",
        "event_id": "$create",
        "origin_server_ts": 20,
        "content": {"room_version": "10", "predecessor": {"room_id": "!old:example.org", "event_id": "$tomb"}},
    }
    link = back_link("!new:example.org", create, 30)
    assert link is not None and link.kind is Kind.NOTICE and link.conversation == "!new:example.org"
    assert link.event_id == "upgrade-from:!old:example.org"
    assert (link.content["predecessor_room"], link.content["predecessor_event"]) == ("!old:example.org", "$tomb")
    assert back_link("!new:example.org", {**create, "content": {"room_version": "10"}}, 30) is None
    t = tombstone(tomb_raw())
    assert t is not None
    gap = not_followed("!old:example.org", t, 50, "join refused")
    assert gap.conversation == "!old:example.org"
    assert gap.content["reason"] == "successor_room_not_joined"
    assert (gap.content["gap_start_ms"], gap.content["gap_end_ms"]) == (10, 50)
    assert gap.content["replacement_room"] == "!new:example.org"


# -- against a real Synapse -------------------------------------------------------------------------------------


async def upgrade(person: Official, room_id: str) -> str:
    """The official's client asks the server to upgrade the room; returns the replacement room id."""
    url = f"{person.client.homeserver}/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/upgrade"
    headers = {"Authorization": f"Bearer {person.client.access_token}"}
    async with aiohttp.ClientSession() as http, http.post(url, json={"new_version": "10"}, headers=headers) as r:
        body = await r.json()
        assert r.status == 200, body
    await person.sync()
    return str(body["replacement_room"])


def notices(sink: MemorySink, room_id: str, notice: str) -> list[Event]:
    return [e for e in sink.in_room(room_id, Kind.NOTICE) if e.content.get("notice") == notice]


def tombstone_in(sink: MemorySink, room_id: str) -> Event | None:
    return next(
        (e for e in sink.in_room(room_id) if isinstance(e.raw, dict) and e.raw.get("type") == "m.room.tombstone"),
        None,
    )


@pytest.mark.synapse
async def test_the_bot_follows_an_upgrade_on_its_own_and_links_both_rooms(bot: Bot, official: OfficialFactory) -> None:
    """A room anyone may join is upgraded by an official, who keeps chatting in the new room without inviting
    anyone: the bot joins the successor by itself, captures the new messages, holds the tombstone in the old
    room and a room_upgrade notice in the new one pointing back; no gap is recorded."""
    alice = await official("alice")
    bot.allowed = frozenset({alice.user_id})
    sink = MemorySink()
    await bot.start(sink)
    old = await alice.create_room(encrypted=False, invite=[bot.user_id])
    await alice.wait_member(old, bot.user_id)
    ok(await alice.client.room_put_state(old, "m.room.join_rules", {"join_rule": "public"}))
    await wait_event(sink, await alice.send_text(old, "in de oude kamer"))
    new = await upgrade(alice, old)
    await alice.wait_member(new, bot.user_id, timeout=30)
    after = await wait_event(sink, await alice.send_text(new, "in de nieuwe kamer"))

    assert after.conversation == new and after.content["body"] == "in de nieuwe kamer"
    tomb = tombstone_in(sink, old)
    assert tomb is not None and tomb.content["content"]["replacement_room"] == new
    links = notices(sink, new, "room_upgrade")
    assert len(links) == 1 and links[0].content["predecessor_room"] == old
    assert notices(sink, old, "capture_gap") == [] and notices(sink, new, "capture_gap") == []


@pytest.mark.synapse
async def test_an_upgrade_the_bot_may_not_join_is_recorded_in_the_old_room(bot: Bot, official: OfficialFactory) -> None:
    """An invite-only room upgraded by an official who invites nobody (no Synapse module): the bot's join is
    refused, and a capture_gap notice (successor_room_not_joined) naming the new room lands in the old room."""
    alice = await official("alice")
    bot.allowed = frozenset({alice.user_id})
    sink = MemorySink()
    await bot.start(sink)
    old = await alice.create_room(encrypted=False, invite=[bot.user_id])
    await alice.wait_member(old, bot.user_id)
    await wait_event(sink, await alice.send_text(old, "in de oude kamer"))
    new = await upgrade(alice, old)

    await poll_until(lambda: bool(notices(sink, old, "capture_gap")), timeout=20)
    (gap,) = notices(sink, old, "capture_gap")
    assert gap.content["reason"] == "successor_room_not_joined"
    assert gap.content["replacement_room"] == new
    tomb = tombstone_in(sink, old)
    assert tomb is not None and gap.content["tombstone_event"] == tomb.event_id


@pytest.mark.synapse
async def test_the_module_brings_the_archiver_into_an_upgraded_encrypted_room(
    archive_bot: ArchiveBot, module_synapse: object, tmp_path: Path
) -> None:
    """With the Synapse module: an official upgrades an encrypted invite-only room and keeps chatting; the
    archiver is in the successor (the module invites and joins it when the official joins) and captures the new
    message decrypted, with the room_upgrade notice pointing back."""
    from tests.support.archiver_module import ARCHIVER, OFFICIALS

    await archive_bot.start()
    minister = await login(archive_bot.server, OFFICIALS[0], tmp_path / "people")
    try:
        old = await minister.create_room(encrypted=True)
        await wait_event(archive_bot.sink, await minister.send_text(old, "oude kamer"), timeout=30)
        new = await upgrade(minister, old)
        await minister.wait_member(new, ARCHIVER, timeout=30)
        after = await wait_event(archive_bot.sink, await minister.send_text(new, "nieuwe kamer, versleuteld"), 30)
        assert after.kind is Kind.MESSAGE, f"not decrypted: {after.kind}"
        assert after.content["body"] == "nieuwe kamer, versleuteld"
        links = notices(archive_bot.sink, new, "room_upgrade")
        assert len(links) == 1 and links[0].content["predecessor_room"] == old
    finally:
        await minister.client.close()


@pytest.mark.synapse
async def test_a_tombstone_pointing_at_an_unrelated_room_is_not_followed(bot: Bot, official: OfficialFactory) -> None:
    """Attack: whoever may send state in an archived room sends a tombstone naming someone else's public room
    (no upgrade: its create event names no predecessor), to pull other people's chat into the archive. The bot
    joins, sees the room is no successor, leaves again, records room_upgrade_refused in the old room, and
    captures nothing of the lure room."""
    alice = await official("alice")
    outsider = await official("outsider")
    bot.allowed = frozenset({alice.user_id})
    sink = MemorySink()
    await bot.start(sink)
    lure = await outsider.create_room(encrypted=False)
    ok(await outsider.client.room_put_state(lure, "m.room.join_rules", {"join_rule": "public"}))
    before = await outsider.send_text(lure, "privé gesprek van anderen")
    old = await alice.create_room(encrypted=False, invite=[bot.user_id])
    await alice.wait_member(old, bot.user_id)
    await wait_event(sink, await alice.send_text(old, "gewoon overleg"))
    content = {"body": "This room has been replaced", "replacement_room": lure}
    ok(await alice.client.room_put_state(old, "m.room.tombstone", content))

    await poll_until(lambda: bool(notices(sink, old, "room_upgrade_refused")), timeout=20)
    (refused,) = notices(sink, old, "room_upgrade_refused")
    assert refused.content["replacement_room"] == lure
    after = await outsider.send_text(lure, "nog meer privé")
    await wait_event(sink, await alice.send_text(old, "na de lokroep"))
    assert sink.in_room(lure) == [] and sink.find(before) is None and sink.find(after) is None
    members = ok(await outsider.client.joined_members(lure))
    assert bot.user_id not in [m.user_id for m in members.members]
