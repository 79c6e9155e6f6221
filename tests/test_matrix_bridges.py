"""Bridged rooms (bridge/sources/matrix/bridges.py): the archive shows the original network and sender."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nio import AsyncClient

from bridge.dev.synapse import SynapseServer
from bridge.events import MATRIX, ConversationId, Event, EventId, Kind, SenderId
from bridge.sources.matrix.bridges import BridgeTracker
from tests.support.officials import OfficialFactory, ok
from tests.test_matrix_source import Bot, MemorySink, bot, wait_event

__all__ = ["bot"]  # the fixture, re-used from the source tests

ROOM = "!portal:example.org"
BRIDGE_STATE = {
    "bridgebot": "@whatsappbot:example.org",
    "creator": "@minister:example.org",
    "protocol": {"id": "whatsapp", "displayname": "WhatsApp"},
    "channel": {"id": "120363@g.us", "displayname": "Kabinetsberaad"},
}


def state(etype: str, key: str, content: dict[str, Any]) -> dict[str, Any]:
    return {"type": etype, "state_key": key, "content": content, "event_id": f"${secrets.token_hex(4)}"}


def message(sender: str) -> Event:
    return Event(
        source=MATRIX,
        conversation=ConversationId(ROOM),
        event_id=EventId("$m"),
        kind=Kind.MESSAGE,
        sender=SenderId(sender),
        sent_at=1,
        received_at=2,
        content={"msgtype": "m.text", "body": "hallo"},
        raw={"type": "m.room.message"},
    )


def test_unbridged_room_is_left_alone() -> None:
    """Events of a room without bridge state come back unchanged."""
    tracker = BridgeTracker()
    event = message("@minister:example.org")
    assert tracker.annotate(event) is event


def test_ghost_by_localpart_and_by_beeper_profile() -> None:
    """In a room with `m.bridge` state every event gets `content["bridge"]` with the network; a ghost
    is recognised by the `<protocol>_<remote id>` localpart or by the Beeper profile fields in its
    member event (which win), the bridge bot and Matrix users are told apart; the raw is untouched."""
    tracker = BridgeTracker()
    tracker.learn_state(
        ROOM,
        [
            state("m.room.member", "@whatsapp_31612345678:example.org", {"membership": "join", "displayname": "Jan"}),
            state(
                "m.room.member",
                "@wa_x:example.org",
                {"membership": "join", "com.beeper.bridge.remote_id": "3161@s.whatsapp.net", "fi.mau.extra": 1},
            ),
            state("m.bridge", "net.maunium.whatsapp://whatsapp/120363@g.us", BRIDGE_STATE),
        ],
    )
    ghost = tracker.annotate(message("@whatsapp_31612345678:example.org"))
    bridge = ghost.content["bridge"]
    assert bridge["protocol"] == {"id": "whatsapp", "displayname": "WhatsApp"}
    assert bridge["channel"]["displayname"] == "Kabinetsberaad"
    assert bridge["state"][0]["type"] == "m.bridge"
    assert bridge["sender"] == {
        "user_id": "@whatsapp_31612345678:example.org",
        "role": "ghost",
        "remote_id": "31612345678",
        "network": "whatsapp",
        "displayname": "Jan",
        "profile": {},
    }
    assert ghost.raw == {"type": "m.room.message"}
    beeper = tracker.annotate(message("@wa_x:example.org")).content["bridge"]["sender"]
    assert beeper["role"] == "ghost" and beeper["remote_id"] == "3161@s.whatsapp.net"
    assert beeper["profile"] == {"com.beeper.bridge.remote_id": "3161@s.whatsapp.net", "fi.mau.extra": 1}
    assert tracker.annotate(message("@whatsappbot:example.org")).content["bridge"]["sender"]["role"] == "bridge_bot"
    official = tracker.annotate(message("@minister:example.org")).content["bridge"]["sender"]
    assert official["role"] == "matrix" and official["remote_id"] is None and official["network"] is None
    # Annotating twice changes nothing (recovered originals are annotated again on commit).
    assert tracker.annotate(ghost) is ghost


def test_unbridging_stops_annotation() -> None:
    """An `m.bridge` event with empty content removes the bridge: later events are plain again."""
    tracker = BridgeTracker()
    key = "net.maunium.whatsapp://whatsapp/120363@g.us"
    tracker.learn(ROOM, state("uk.half-shot.bridge", key, BRIDGE_STATE))
    assert "bridge" in tracker.annotate(message("@a:example.org")).content
    tracker.learn(ROOM, state("uk.half-shot.bridge", key, {}))
    assert "bridge" not in tracker.annotate(message("@a:example.org")).content


async def say(client: AsyncClient, room_id: str, body: str) -> str:
    response = ok(await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body}))
    return str(response.event_id)


@pytest.fixture
async def ghost(synapse: SynapseServer) -> AsyncIterator[AsyncClient]:
    """A mautrix-style puppet: a user named `whatsapp_<phone number>`."""
    phone = f"316{secrets.randbelow(10**8):08d}"
    user_id, token = await synapse.register_user_async(f"whatsapp_{phone}", "pw-ghost")
    client = AsyncClient(synapse.url, user_id)
    client.restore_login(user_id, "GHOST", token)
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.synapse
async def test_bridged_room_events_carry_network_and_remote_sender(
    bot: Bot, official: OfficialFactory, ghost: AsyncClient
) -> None:
    """Against Synapse: after `m.bridge` state is set in a room, a message from a ghost user is
    captured with the bridge's network and channel and the ghost's remote id and display name; an
    official's message is marked as a Matrix sender; after a restart (state relearned from the
    full-state sync) ghost messages are still annotated."""
    alice = await official("alice")
    bot.allowed = frozenset({alice.user_id})
    sink = MemorySink()
    await bot.start(sink)
    room_id = await alice.create_room(encrypted=False, invite=[bot.user_id, ghost.user_id])
    await alice.wait_member(room_id, bot.user_id)
    key = "net.maunium.whatsapp://whatsapp/120363@g.us"
    ok(await alice.client.room_put_state(room_id, "m.bridge", {**BRIDGE_STATE, "creator": alice.user_id}, key))
    ok(await ghost.join(room_id))
    member = {"membership": "join", "displayname": "Jan de Vries", "fi.mau.will_auto_accept": True}
    ok(await ghost.room_put_state(room_id, "m.room.member", member, ghost.user_id))
    from_ghost = str(
        ok(await ghost.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hoi"})).event_id
    )
    from_alice = await alice.send_text(room_id, "dag Jan")

    event = await wait_event(sink, from_ghost)
    bridge = event.content["bridge"]
    assert bridge["protocol"]["id"] == "whatsapp" and bridge["channel"]["id"] == "120363@g.us"
    phone = ghost.user_id[len("@whatsapp_") :].split(":")[0]
    assert bridge["sender"]["role"] == "ghost" and bridge["sender"]["remote_id"] == phone
    assert bridge["sender"]["displayname"] == "Jan de Vries"
    assert bridge["sender"]["profile"] == {"fi.mau.will_auto_accept": True}
    assert (await wait_event(sink, from_alice)).content["bridge"]["sender"]["role"] == "matrix"

    await bot.stop()
    await bot.start(sink)
    again = await say(ghost, room_id, "nog")
    after = await wait_event(sink, again)
    assert after.content["bridge"]["sender"]["displayname"] == "Jan de Vries"
    assert after.content["bridge"]["sender"]["remote_id"] == phone
