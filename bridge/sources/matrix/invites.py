"""Invites and configured rooms: accept invites from allowed inviters or for configured rooms,
decline the rest, and join configured rooms without waiting for an invite.

Contract: `handle_invites(client, invites, allowed_inviters, rooms)` takes the
`rooms.invite` section of a sync body. An invite is accepted when the room is
in `rooms` or the inviter (the sender of our own `m.room.member` invite in the
stripped state) is in `allowed_inviters`; otherwise it is declined. Logs carry
room and user ids only. A refusal by the server (room gone, forbidden) is
logged and skipped: retrying the batch cannot fix it. An unreachable server
raises `MatrixUnavailableError` so the batch is retried.
"""

from __future__ import annotations

import logging
from collections.abc import Set
from typing import Any

from bridge.sources.matrix.client import MatrixRequestError, RawKeepingClient, checked

log = logging.getLogger(__name__)


async def handle_invites(
    client: RawKeepingClient, invites: dict[str, Any], allowed_inviters: Set[str], rooms: Set[str]
) -> None:
    for room_id, invite in invites.items():
        who = inviter(invite, client.user_id)
        accept = room_id in rooms or who in allowed_inviters
        try:
            if accept:
                await checked(client.join(room_id), "join")
                log.info("accepted invite to %s from %s", room_id, who)
            else:
                await checked(client.room_leave(room_id), "decline invite")
                log.warning("declined invite to %s from %s: not an allowed inviter", room_id, who)
        except MatrixRequestError as exc:
            log.warning("invite to %s from %s: %s", room_id, who, exc)


def inviter(invite: dict[str, Any], user_id: str) -> str | None:
    """Who invited us: the sender of our own m.room.member invite in the stripped state."""
    for event in (invite.get("invite_state") or {}).get("events") or []:
        if event.get("type") == "m.room.member" and event.get("state_key") == user_id:
            sender = event.get("sender")
            return sender if isinstance(sender, str) else None
    return None


async def join_configured(client: RawKeepingClient, rooms: Set[str]) -> None:
    """Join configured rooms the bot is not in yet (public or previously invited ones).

    A room that refuses (private, banned, unknown) is logged by id and retried at
    the next connection; an invite for it is still accepted whenever it comes.
    """
    for room_id in sorted(rooms - set(client.rooms)):
        try:
            await checked(client.join(room_id), "join configured room")
            log.info("joined configured room %s", room_id)
        except MatrixRequestError as exc:
            log.warning("cannot join configured room %s yet: %s", room_id, exc)
