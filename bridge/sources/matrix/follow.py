"""Following a room upgrade on the homeserver (I/O; the decisions are `upgrades`).

Contract: `follow_upgrade(client, old_room, tomb, transient)` joins `tomb.replacement` unless the bot is in it
already, checks that the new room's `m.room.create` names `old_room` as its predecessor (else leaves it again: a
lure), and returns the notice to record in the old room, or None when the upgrade was followed. A refusal whose
errcode is in `transient` raises (`MatrixRequestError`: retried as an outage, the cursor stays); any other
refusal is the `successor_room_not_joined` gap.
"""

from __future__ import annotations

import logging
from collections.abc import Set

from nio import RoomGetStateEventError

from bridge.clock import now_ms
from bridge.events import Event
from bridge.sources.matrix.client import MatrixRequestError, RawKeepingClient, checked
from bridge.sources.matrix.upgrades import Tombstone, lured, names_predecessor, not_followed

__all__ = ["follow_upgrade"]

log = logging.getLogger(__name__)


async def follow_upgrade(
    client: RawKeepingClient, old_room: str, tomb: Tombstone, transient: Set[str | None]
) -> Event | None:
    if tomb.replacement in client.rooms:
        return None  # in it already (the Synapse module, an invite, or an earlier follow)
    try:
        await checked(client.join(tomb.replacement), "join")
    except MatrixRequestError as exc:
        if exc.errcode in transient:
            raise
        log.warning("ALERT room upgrade not followed", extra={
            "room_id": old_room, "replacement": tomb.replacement, "errcode": exc.errcode})  # fmt: skip
        return not_followed(old_room, tomb, now_ms(), str(exc))
    create = await client.room_get_state_event(tomb.replacement, "m.room.create")
    content = None if isinstance(create, RoomGetStateEventError) else getattr(create, "content", None)
    if not names_predecessor(content, old_room):
        log.warning("ALERT tombstone points at a room that is no successor; left again", extra={
            "room_id": old_room, "replacement": tomb.replacement})  # fmt: skip
        await client.room_leave(tomb.replacement)
        return lured(old_room, tomb, now_ms())
    log.info("room upgrade followed", extra={"room_id": old_room, "replacement": tomb.replacement})
    return None
