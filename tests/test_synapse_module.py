"""The archiver module inside a real Synapse: in every official room from its first event, and not removable.

The attacks are an official's (or an outsider's) own client calls: create a room and talk at once without
inviting anyone, kick or ban the archiver, and the archiver's own device trying to leave.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nio import RoomGetStateEventError

from bridge.dev.synapse import SynapseServer
from bridge.events import Kind
from tests.support.archiver_module import (
    ADMINS,
    ARCHIVER,
    OFFICIALS,
    OUTSIDERS,
    ArchiveBot,
    archive_bot,
    login,
    module_synapse,
)
from tests.support.officials import Official, poll_until

__all__ = ["archive_bot", "module_synapse"]  # fixtures used by name

pytestmark = pytest.mark.synapse


@pytest.fixture
async def people(module_synapse: SynapseServer, tmp_path: Path) -> AsyncIterator[dict[str, Official]]:
    made: dict[str, Official] = {}
    for user_id in (*OFFICIALS, *ADMINS, *OUTSIDERS):
        made[user_id.split(":")[0][1:]] = await login(module_synapse, user_id, tmp_path / "people")
    try:
        yield made
    finally:
        for person in made.values():
            await person.client.close()


async def membership(person: Official, room_id: str, user_id: str = ARCHIVER) -> str | None:
    response = await person.client.room_get_state_event(room_id, "m.room.member", user_id)
    if isinstance(response, RoomGetStateEventError):
        return None
    content: dict[str, Any] = response.content
    return str(content.get("membership"))


async def wait_membership(person: Official, room_id: str, expected: str, timeout: float = 20) -> None:
    async def reached() -> bool:
        return await membership(person, room_id) == expected

    await poll_until(reached, timeout)


async def test_first_message_of_an_encrypted_room_created_alone_is_captured_decrypted(
    archive_bot: ArchiveBot, people: dict[str, Official]
) -> None:
    """An official creates an encrypted room, invites nobody and sends at once: the archiver holds the room
    key of that very first message (it was a member before the key was shared) and captures it in clear."""
    await archive_bot.start()
    minister = people["minister"]
    room_id = await minister.create_room(encrypted=True)  # one sync after createRoom, as any client does
    event_id = await minister.send_text(room_id, "eerste bericht: het besluit")

    await poll_until(lambda: archive_bot.sink.find(event_id) is not None, timeout=30)
    event = archive_bot.sink.find(event_id)
    assert event is not None
    assert event.kind is Kind.MESSAGE, f"first message not decrypted: {event.kind} {event.content}"
    assert event.content["body"] == "eerste bericht: het besluit"
    assert await membership(minister, room_id) == "join"


async def test_archiver_is_invited_within_room_creation(people: dict[str, Official]) -> None:
    """createRoom by an official returns a room whose state already lists the archiver (invite or join):
    no window in which the official is alone with a shared key."""
    room_id = await people["secretary"].create_room(encrypted=False)
    assert await membership(people["secretary"], room_id) in ("invite", "join")
    await wait_membership(people["secretary"], room_id, "join")


async def test_official_joining_an_outsiders_room_brings_the_archiver(people: dict[str, Official]) -> None:
    """A room made by a non-official is not touched until an official joins it; then the archiver joins too."""
    outsider, minister = people["outsider"], people["minister"]
    room_id = await outsider.create_room(encrypted=True, invite=[minister.user_id])
    assert await membership(outsider, room_id) is None

    await minister.client.join(room_id)
    await wait_membership(outsider, room_id, "join")


async def test_outsiders_rooms_are_left_alone(people: dict[str, Official]) -> None:
    """No official in the room, no archiver: the module covers official rooms only."""
    room_id = await people["outsider"].create_room(encrypted=False)
    await people["outsider"].send_text(room_id, "privé")
    assert await membership(people["outsider"], room_id) is None


async def test_kick_and_ban_of_the_archiver_are_refused_and_logged(
    module_synapse: SynapseServer, people: dict[str, Official]
) -> None:
    """The room's creator (power level 100) can neither kick nor ban the archiver; both attempts are logged."""
    minister = people["minister"]
    room_id = await minister.create_room(encrypted=True)
    await wait_membership(minister, room_id, "join")

    kick = await minister.client.room_kick(room_id, ARCHIVER, reason="weg ermee")
    ban = await minister.client.room_ban(room_id, ARCHIVER, reason="weg ermee")

    assert getattr(kick, "status_code", None) == "M_FORBIDDEN", kick
    assert getattr(ban, "status_code", None) == "M_FORBIDDEN", ban
    assert await membership(minister, room_id) == "join"
    log = (module_synapse.workdir / "homeserver.log").read_text()
    assert f"REFUSED leave of the archiver in {room_id} by {minister.user_id}" in log
    assert f"REFUSED ban of the archiver in {room_id} by {minister.user_id}" in log


async def test_revoking_the_archivers_invite_is_refused(people: dict[str, Official]) -> None:
    """Racing the module by un-inviting the archiver right after createRoom is refused as a kick."""
    minister = people["minister"]
    room_id = await minister.create_room(encrypted=False)
    response = await minister.client.room_kick(room_id, ARCHIVER)
    assert getattr(response, "status_code", None) == "M_FORBIDDEN", response
    await wait_membership(minister, room_id, "join")


async def test_the_archiver_cannot_leave_but_an_admin_can_remove_it(
    module_synapse: SynapseServer, people: dict[str, Official], tmp_path: Path
) -> None:
    """The archiver's own leave (a stolen bot token) is refused; an admin named in the config may remove it."""
    admin, minister = people["archadmin"], people["minister"]
    room_id = await admin.create_room(encrypted=False, invite=[minister.user_id])
    await minister.client.join(room_id)
    await wait_membership(admin, room_id, "join")  # the official's join brought the archiver

    archiver = await login(module_synapse, ARCHIVER, tmp_path / "archiver")
    try:
        leave = await archiver.client.room_leave(room_id)
        assert getattr(leave, "status_code", None) == "M_FORBIDDEN", leave
        assert await membership(admin, room_id) == "join"
    finally:
        await archiver.client.close()

    kick = await admin.client.room_kick(room_id, ARCHIVER, reason="kamer opgeheven")
    assert getattr(kick, "status_code", None) is None, kick
    assert await membership(admin, room_id) == "leave"
