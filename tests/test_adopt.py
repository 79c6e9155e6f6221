"""`chatarchief adopt` against a real Synapse: the archiver brought into the officials' existing rooms, the bot
backfills what it can read, and what it cannot decrypt is reported with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.adopt import may_invite, room_state, unreadable
from bridge.dev.synapse import SynapseServer
from bridge.events import Kind
from tests.support.botrun import chatarchief, write_config
from tests.support.officials import OfficialFactory, ok, poll_until, unique_name
from tests.test_matrix_source import Bot, MemorySink


def test_who_may_invite_and_what_is_unreadable_come_from_state_and_history() -> None:
    """Pure: an official joined with enough power may invite; encrypted events before the join are counted."""
    state = room_state(
        [
            {"type": "m.room.member", "state_key": "@m:x", "content": {"membership": "join"}},
            {"type": "m.room.member", "state_key": "@s:x", "content": {"membership": "invite"}},
            {"type": "m.room.power_levels", "state_key": "", "content": {"invite": 50, "users": {"@o:x": 100}}},
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}},
            {"type": "m.room.encryption", "state_key": "", "content": {}},
        ]
    )
    assert state.encrypted and state.history_visibility == "joined" and state.invite_level == 50
    assert not may_invite(state, "@m:x") and not may_invite(state, "@s:x")
    assert may_invite(room_state([{"type": "m.room.member", "state_key": "@m:x", "content": {"membership": "join"}}]),
                      "@m:x")  # fmt: skip
    creator = [
        {"type": "m.room.create", "state_key": "", "sender": "@o:x", "content": {"room_version": "12"}},
        {"type": "m.room.member", "state_key": "@o:x", "content": {"membership": "join"}},
        {"type": "m.room.power_levels", "state_key": "", "content": {"invite": 50}},
    ]
    assert may_invite(room_state(creator), "@o:x")  # a v12 creator outranks every power level
    assert not may_invite(room_state([{**creator[0], "content": {"room_version": "10"}}, *creator[1:]]), "@o:x")
    chunk = [
        {"type": "m.room.encrypted", "origin_server_ts": 5},
        {"type": "m.room.encrypted", "origin_server_ts": 50},
        {"type": "m.room.message", "origin_server_ts": 6},
    ]
    assert unreadable(chunk, 10) == 1 and unreadable(chunk, None) == 2


@pytest.mark.synapse
async def test_adopt_brings_the_archiver_in_reports_the_undecryptable_and_names_the_room_it_cannot_enter(
    synapse: SynapseServer, official: OfficialFactory, tmp_path: Path
) -> None:
    """Three existing rooms of an official, none with the archiver: an encrypted one with two messages, a plain
    one, and an outsider's room where the official may not invite. adopt joins the first two (exit 1, naming the
    third and why); the running bot backfills the plain message in clear and stores the two encrypted ones as
    undecryptable, which adopt reported with the reason. Once the official has left the third room, adopt
    exits 0 and coverage agrees."""
    name = unique_name("adoptbot")
    bot_id, _ = await synapse.register_user_async(name, f"pw-{name}", admin=True)
    minister = await official("minister")
    outsider = await official("outsider")
    secret = await minister.create_room(encrypted=True)
    sealed = [await minister.send_text(secret, f"geheim {i}") for i in range(2)]
    plain = await minister.create_room(encrypted=False)
    said = await minister.send_text(plain, "openbaar overleg")
    foreign = await outsider.create_room(encrypted=False, invite=[minister.user_id])
    levels = {"invite": 50}  # room v12: the creator needs no entry (and may not have one)
    ok(await outsider.client.room_put_state(foreign, "m.room.power_levels", levels))
    ok(await minister.client.join(foreign))

    config = write_config(
        tmp_path, synapse, bot_id, f"pw-{name}", minister.user_id, extra_matrix=f'officials = ["{minister.user_id}"]'
    )
    bot = Bot(synapse, bot_id, tmp_path / "secrets" / "bot.password", tmp_path / "bot-store")
    sink = MemorySink()
    await bot.start(sink)
    try:
        result = chatarchief("adopt", "--config", str(config), "--json", timeout=120)
        assert result.returncode == 1, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["failed"] == [foreign]
        assert f"not adopted: {foreign}" in result.stderr
        rooms = {r["room_id"]: r for r in report["rooms"]}
        assert "may invite" in rooms[foreign]["reason"]
        assert rooms[secret]["outcome"] == "joined" and rooms[secret]["invited_by"] == minister.user_id
        assert rooms[secret]["undecryptable_before_join"] == 2
        assert any("cannot be decrypted" in n for n in rooms[secret]["notes"])
        assert rooms[plain]["outcome"] == "joined" and rooms[plain]["undecryptable_before_join"] == 0

        await poll_until(lambda: all(sink.find(e) is not None for e in [*sealed, said]), timeout=30)
        message = sink.find(said)
        assert message is not None and message.kind is Kind.MESSAGE and message.content["body"] == "openbaar overleg"
        for event_id in sealed:
            stored = sink.find(event_id)
            assert stored is not None and stored.kind is Kind.UNDECRYPTABLE

        ok(await minister.client.room_leave(foreign))
        again = chatarchief("adopt", "--config", str(config), timeout=120)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "0 failed" in again.stdout
        assert chatarchief("init", "--config", str(config)).returncode == 0
        covered = chatarchief("coverage", "--config", str(config))
        assert covered.returncode == 0, covered.stdout + covered.stderr
    finally:
        await bot.stop()


@pytest.mark.synapse
async def test_adopt_without_admin_rights_is_a_usage_error(
    synapse: SynapseServer, official: OfficialFactory, tmp_path: Path
) -> None:
    """A bot that is not a server admin cannot adopt: one line saying so, exit 2; no config: exit 2."""
    name = unique_name("plainbot")
    bot_id, _ = await synapse.register_user_async(name, f"pw-{name}")
    minister = await official("minister")
    config = write_config(tmp_path, synapse, bot_id, f"pw-{name}", minister.user_id)
    result = chatarchief("adopt", "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "server admin" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert chatarchief("adopt").returncode == 2
