"""Invites and configured rooms: carry out the planner's invite decisions, and join configured rooms
without waiting for an invite.

Contract: `handle_invites(client, invites)` joins the rooms of accepted invites
and leaves (declines) the others; who may invite is decided by
`planner.plan`. Logs carry room and user ids only. A refusal by the server
(room gone, forbidden) is logged and skipped: retrying the batch cannot fix
it. An unreachable server raises `MatrixUnavailableError` so the batch is
retried.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Set

from bridge.sources.matrix.client import MatrixRequestError, RawKeepingClient, checked
from bridge.sources.matrix.planner import Invite

log = logging.getLogger(__name__)


async def handle_invites(client: RawKeepingClient, invites: Iterable[Invite]) -> None:
    for invite in invites:
        room_id, who = invite.room_id, invite.inviter
        try:
            if invite.accept:
                await checked(client.join(room_id), "join")
                log.info("accepted invite", extra={"room_id": room_id, "inviter": who})
            else:
                await checked(client.room_leave(room_id), "decline invite")
                log.warning("declined invite: not an allowed inviter", extra={"room_id": room_id, "inviter": who})
        except MatrixRequestError as exc:
            log.warning("invite not handled", extra={"room_id": room_id, "inviter": who, "error": str(exc)})


async def join_configured(client: RawKeepingClient, rooms: Set[str]) -> None:
    """Join configured rooms the bot is not in yet (public or previously invited ones).

    A room that refuses (private, banned, unknown) is logged by id and retried at
    the next connection; an invite for it is still accepted whenever it comes.
    """
    for room_id in sorted(rooms - set(client.rooms)):
        try:
            await checked(client.join(room_id), "join configured room")
            log.info("joined configured room", extra={"room_id": room_id})
        except MatrixRequestError as exc:
            log.warning("cannot join configured room yet", extra={"room_id": room_id, "error": str(exc)})
