"""Chatarchief's Synapse module: the archiver in every official room from its first event.

Loaded by Synapse from its `modules:` config (see `rules.parse` for the keys):

    modules:
      - module: chatarchief_synapse.ArchiverModule
        config: {archiver: "@archive:example.org", officials: [...] | all_local_users: true, admins: [...]}

What it does, through Synapse's ModuleApi only (everything is async; no database call of its own, nothing that
blocks the reactor):
- `on_create_room`: a room an official creates gets the archiver in its initial invite list, so the archiver is
  a member before any message and the official's client shares the room key with the archiver's devices.
- `on_new_event`: the archiver's invite from an official or admin is followed by a server-side join at once; an
  official joining a room the archiver is not in makes the official invite it and the archiver join. The work
  runs as a Synapse background process, so the notifier is not held up while it happens.
- `on_new_event` with `spool: {path, public_key}`: every event of a room the archiver is joined to (in an
  end-to-end encrypted room: its Megolm ciphertext, as Synapse holds it) is sealed to the bot's X25519 key and
  appended to the spool with an fsync (`chatarchief_synapse.spool`), in Synapse's thread pool, as a background
  process (the notifier and the sender's response never wait for it). The bot reads the spool (decrypting with
  its own room keys) and so has events durable before its sync loop brings them. A failure is logged at ERROR
  (`ALERT`) and never breaks Synapse's event handling.
- `check_event_allowed`: a kick, ban, revoked invite or own leave of the archiver is refused (403) unless an admin
  in `admins` does it; every attempt, refused or allowed, is logged at WARNING.

The decisions are pure functions in `chatarchief_synapse.rules` (tested without Synapse); this file is the shell.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from chatarchief_synapse.rules import MEMBER, Action, Policy, guard, initial_invites, parse, reaction, spooled

if TYPE_CHECKING:  # Synapse is only importable inside its own venv
    from synapse.events import EventBase
    from synapse.module_api import ModuleApi
    from synapse.types import Requester, StateMap

__all__ = ["ArchiverModule", "Policy"]
__version__ = "0.1.0"

logger = logging.getLogger(__name__)


class ArchiverModule:
    """See the module docstring."""

    def __init__(self, config: Policy, api: ModuleApi) -> None:
        self._api = api
        self._policy = config.with_server(api.server_name)
        self._spool: Any = None
        if self._policy.spool is not None:
            from chatarchief_synapse.spool import SpoolWriter  # needs `cryptography` (a Synapse dependency)

            spool = self._policy.spool
            self._spool = SpoolWriter(spool.path, spool.public_key, keep_days=spool.keep_days)
        api.register_third_party_rules_callbacks(
            on_create_room=self.on_create_room,
            check_event_allowed=self.check_event_allowed,
            on_new_event=self.on_new_event,
        )
        logger.info(
            "chatarchief archiver module: archiver %s, %s, %d admin(s)",
            self._policy.archiver,
            "all local users are officials"
            if self._policy.all_local_users
            else f"{len(self._policy.officials)} official(s)",
            len(self._policy.admins),
        )
        if self._policy.spool is not None:
            logger.info(
                "chatarchief archiver module: events of the archiver's rooms sealed into %s", self._policy.spool.path
            )

    @staticmethod
    def parse_config(config: dict[str, Any]) -> Policy:
        from synapse.module_api.errors import ConfigError

        try:
            return parse(config)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    async def on_create_room(self, requester: Requester, config: dict[str, Any], is_requester_admin: bool) -> None:
        creator = requester.user.to_string()
        invite = config.get("invite") or []
        updated = initial_invites(self._policy, creator, [str(u) for u in invite] if isinstance(invite, list) else [])
        if updated is not None:
            config["invite"] = updated
            logger.info(
                "chatarchief: archiver %s added to the invites of a room %s creates", self._policy.archiver, creator
            )

    async def check_event_allowed(self, event: EventBase, state_events: StateMap[EventBase]) -> tuple[bool, None]:
        if event.type != MEMBER or event.state_key != self._policy.archiver:
            return True, None
        previous = state_events.get((MEMBER, self._policy.archiver))
        current = previous.membership if previous is not None else None
        membership = event.membership
        if membership not in ("leave", "ban"):
            return True, None
        by = previous.sender if previous is not None else None
        refusal = guard(self._policy, event.state_key, membership, event.sender, current, by)
        if refusal is None:
            logger.warning(
                "chatarchief: %s of the archiver in %s by %s allowed (was %s)",
                membership,
                event.room_id,
                event.sender,
                current,
            )
            return True, None
        logger.warning(
            "chatarchief: REFUSED %s of the archiver in %s by %s (was %s): %s",
            membership,
            event.room_id,
            event.sender,
            current,
            refusal,
        )
        return False, None

    async def on_new_event(self, event: EventBase, state_events: StateMap[EventBase]) -> None:
        if self._spool is not None:
            try:
                archiver = state_events.get((MEMBER, self._policy.archiver))
                if spooled(self._policy, archiver.membership if archiver else None):
                    # Not awaited, like _cover: neither the notifier nor anyone else waits for the fsync.
                    self._api.run_as_background_process("chatarchief_spool", self._spool_event, event, "join")
            except Exception:
                logger.exception("chatarchief: ALERT event %s not spooled", event.event_id)
        if event.type != MEMBER or not event.is_state():
            return
        archiver = state_events.get((MEMBER, self._policy.archiver))
        action = reaction(
            self._policy,
            event.state_key,
            event.membership,
            event.sender,
            archiver.membership if archiver is not None else None,
            covered_at_creation=self._covered_at_creation(event, state_events),
        )
        if action is None:
            return
        inviter = event.state_key if action is Action.INVITE_AND_JOIN else None
        # Not awaited: the notifier waits for on_new_event callbacks before it wakes clients up.
        self._api.run_as_background_process("chatarchief_cover_room", self._cover, event.room_id, inviter)

    async def _spool_event(self, event: EventBase, membership: str) -> None:
        from chatarchief_synapse.spool import client_event

        try:
            body = client_event(event.get_dict(), event.event_id, event.unsigned, membership)
            await self._api.defer_to_thread(self._spool.append, body)
        except Exception:  # never into Synapse's event handling; the sync loop still brings the event
            logger.exception("chatarchief: ALERT event %s in %s not spooled", event.event_id, event.room_id)

    def _covered_at_creation(self, event: EventBase, state_events: StateMap[EventBase]) -> bool:
        """The creator's first join in a room made by createRoom (not an upgrade): on_create_room invited us."""
        create = state_events.get(("m.room.create", ""))
        if create is None or create.sender != event.state_key or "predecessor" in create.content:
            return False
        return list(event.prev_event_ids()) == [create.event_id] and self._policy.is_official(create.sender)

    async def _cover(self, room_id: str, inviter: str | None) -> None:
        archiver = self._policy.archiver
        if inviter is not None:
            if not self._api.is_mine(inviter):
                logger.warning("chatarchief: cannot invite the archiver into %s: %s is not local", room_id, inviter)
                return
            try:
                await self._api.update_room_membership(inviter, archiver, room_id, "invite")
            except Exception as exc:  # a module must not crash Synapse's background process
                logger.warning(
                    "chatarchief: ALERT inviting the archiver into %s as %s failed: %s", room_id, inviter, exc
                )
                return
            logger.info("chatarchief: %s invited the archiver into %s", inviter, room_id)
        try:
            await self._api.update_room_membership(archiver, archiver, room_id, "join")
        except Exception as exc:
            logger.warning("chatarchief: ALERT the archiver could not join %s: %s", room_id, exc)
            return
        logger.info("chatarchief: the archiver joined %s", room_id)
