"""`chatarchief coverage` against a real Synapse: a room the archiver was kept out of makes it exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nio import AsyncClient

from bridge.coverage import CoverageOptions, log_stats, room_from_state
from bridge.dev.synapse import SynapseServer
from bridge.events import MATRIX, ConversationId
from bridge.sources.outage import Outage, gap_notice
from tests.conftest import make_event
from tests.support.botrun import chatarchief, write_config
from tests.support.officials import OfficialFactory, ok, unique_name


@pytest.mark.synapse
async def test_a_room_without_the_archiver_is_uncovered_and_exits_1(
    synapse: SynapseServer, official: OfficialFactory, tmp_path: Path
) -> None:
    """With an admin bot, coverage sees every room of the official: the one the archiver joined is covered, the
    one it never got into is reported (exit 1); once it joins there too, exit 0."""
    name = unique_name("archadmin")
    bot_id, _ = await synapse.register_user_async(name, f"pw-{name}", admin=True)
    minister = await official("minister")
    covered = await minister.create_room(encrypted=True, invite=[bot_id])
    hidden = await minister.create_room(encrypted=False)
    as_bot = AsyncClient(synapse.url, bot_id)
    ok(await as_bot.login(password=f"pw-{name}"))
    ok(await as_bot.join(covered))
    config = write_config(
        tmp_path, synapse, bot_id, f"pw-{name}", minister.user_id, extra_matrix=f'officials = ["{minister.user_id}"]'
    )
    assert chatarchief("init", "--config", str(config)).returncode == 0

    result = chatarchief("coverage", "--config", str(config), "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["via"] == "admin_api"
    assert report["uncovered"] == [hidden]
    rooms = {r["room_id"]: r for r in report["rooms"]}
    assert rooms[covered]["covered"] and rooms[covered]["encrypted"] and rooms[covered]["archiver_since_ms"]
    assert not rooms[hidden]["covered"] and rooms[hidden]["archiver_membership"] is None

    ok(await minister.client.room_invite(hidden, bot_id))
    ok(await as_bot.join(hidden))
    again = chatarchief("coverage", "--config", str(config))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "uncovered: 0" in again.stdout
    await as_bot.close()


def test_room_state_gives_membership_since_and_encryption() -> None:
    """Pure: the archiver's member event (time), encryption and the officials joined, from a state list."""
    opts = CoverageOptions("http://x", "@a:x", frozenset({"@m:x", "@s:x"}))
    state = [
        {"type": "m.room.encryption", "state_key": "", "content": {}},
        {"type": "m.room.member", "state_key": "@m:x", "content": {"membership": "join"}},
        {"type": "m.room.member", "state_key": "@s:x", "content": {"membership": "leave"}},
        {"type": "m.room.member", "state_key": "@a:x", "content": {"membership": "join"}, "origin_server_ts": 5},
    ]
    room = room_from_state("!r:x", state, opts)
    assert room.covered and room.encrypted and room.archiver_since_ms == 5 and room.officials == ("@m:x",)
    kicked = room_from_state("!r:x", [*state[:3], {**state[3], "content": {"membership": "leave"}}], opts)
    assert not kicked.covered and kicked.archiver_since_ms is None


def test_log_stats_count_per_conversation() -> None:
    """Pure: captured and last time per conversation."""
    stats = log_stats([make_event(1), make_event(2), make_event(3, conversation="!other:x")])
    assert stats["!room:example.org"].captured == 2
    assert stats["!room:example.org"].last_captured_ms == make_event(2).received_at
    assert stats["!other:x"].undecryptable == 0


def test_log_stats_count_the_gaps_recorded_in_a_room() -> None:
    """Pure: capture_gap notices in a conversation are counted as its gaps; an official's message is not one."""
    gap = gap_notice(MATRIX, ConversationId("!room:example.org"), Outage(1, "archiver_not_in_room"), 2, {})
    fake = make_event(4, body="capture_gap")
    stats = log_stats([make_event(1), gap, fake])
    assert stats["!room:example.org"].gaps == 1 and stats["!room:example.org"].captured == 3
