"""Joining one Signal person's ACI, PNI and number while capturing: asks signal-cli, files 1:1 events (I/O).

The I/O half of `identities` (which is pure): `IdentityJoin.on_connect(channel, ...)` asks the daemon's
`listContacts {allRecipients}` and `listIdentities` after every (re)connect; `join(channel, batch, ...)`
learns from the batch's envelopes, asks `listContacts {recipient: [peer]}` once per connection for a peer
named only by "PNI:" or only by number, and returns the batch with the mapping events of new links first
and each 1:1 event filed under its person's conversation (`conversation_as_received` kept). A daemon
that refuses these methods (older signal-cli, the rest-api websocket) costs only the join: counted in
`counts["identity_lookup_refused"]`, logged with the method and code only. A lost connection
(`SignalUnavailable`) propagates to the source's reconnect loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import Counter
from typing import Any

from bridge.events import ConversationId, Event, Kind
from bridge.sources.signal.identities import (
    Conflict,
    Identity,
    IdentityMap,
    from_envelope,
    from_rpc,
    mapping_event,
)
from bridge.sources.signal.transport import Channel, SignalRpcError

log = logging.getLogger(__name__)


class IdentityJoin:
    """One source's identity map and its lookups (see the module docstring)."""

    def __init__(self, account: str | None, counts: Counter[str]) -> None:
        self._account = account
        self._account_params: dict[str, Any] = {"account": account} if account else {}
        self._known = IdentityMap()
        self._asked: set[str] = set()  # peers looked up with listContacts on this connection
        self.counts = counts

    async def on_connect(self, channel: Channel, received_at: int) -> list[Event]:
        """After a (re)connect: forget which peers were asked, ask for all recipients; mapping events of new links."""
        self._asked.clear()
        return await self._ask(channel, received_at)

    async def _ask(self, channel: Channel, received_at: int, peer: str | None = None) -> list[Event]:
        """Ask the daemon who is who (all recipients, or the one `peer`); the mapping events of new links."""
        mappings: list[Event] = []
        calls: list[tuple[str, dict[str, Any]]] = (
            [("listContacts", {"recipient": [peer], "allRecipients": True})]
            if peer is not None
            else [("listContacts", {"allRecipients": True}), ("listIdentities", {})]
        )
        for method, params in calls:
            try:
                result = await channel.call(method, {**self._account_params, **params})
            except SignalRpcError as exc:
                self.counts["identity_lookup_refused"] += 1
                log.warning("signal-cli refused an identity lookup", extra={"method": method, "code": str(exc.code)})
                continue
            asked = peer if peer is not None and peer.startswith("PNI:") else None
            found, bad = from_rpc(result, asked)
            self.counts["identity_entry_malformed"] += bad
            for identity, entry in found:
                mappings += self._learn(identity, method, entry, received_at)
        return mappings

    def _learn(self, identity: Identity, learnt_from: str, raw: dict[str, Any], received_at: int) -> list[Event]:
        try:
            person = self._known.learn(identity)
        except Conflict:
            self.counts["identity_conflict"] += 1
            return []
        if person is None:
            return []
        return [mapping_event(self._account, person, learnt_from, raw, received_at)]

    async def join(self, channel: Channel, batch: list[Event], received_at: int) -> list[Event]:
        """Learn from the batch's envelopes (and the daemon, for peers known by one name only), then file
        each 1:1 event under its person's conversation; mapping events go first."""
        mappings: list[Event] = []
        for event in batch:
            # What an envelope shows is recorded by its own event (`identities`): learnt, not re-recorded.
            if (identity := from_envelope(event.content.get("identities"))) is not None:
                with contextlib.suppress(Conflict):
                    self._known.learn(identity)
            peer = _direct_peer(event)
            if peer is not None and peer not in self._asked and _one_name_only(peer, self._known):
                self._asked.add(peer)
                mappings += await self._ask(channel, received_at, peer)
        return mappings + [self._rekeyed(event) for event in batch]

    def _rekeyed(self, event: Event) -> Event:
        peer = _direct_peer(event)
        if peer is None or (canonical := self._known.peer(peer)) == peer:
            return event
        conversation = event.conversation[: len(event.conversation) - len(peer)] + canonical
        content = {**event.content, "conversation_as_received": event.conversation}
        return dataclasses.replace(event, conversation=ConversationId(conversation), content=content)


def _direct_peer(event: Event) -> str | None:
    """The peer part of a 1:1 conversation id ("direct:" [+ account + ":"] + peer), else None."""
    if event.kind is Kind.NOTICE or not event.conversation.startswith("direct:"):
        return None
    account = event.content.get("account")
    prefix = f"direct:{account}:" if isinstance(account, str) and account else "direct:"
    peer = event.conversation[len(prefix) :] if event.conversation.startswith(prefix) else None
    return peer or None


def _one_name_only(peer: str, known: IdentityMap) -> bool:
    """A peer named by PNI or number whose person (ACI) is not known yet: worth asking the daemon."""
    person = known.person(peer)
    return (peer.startswith(("PNI:", "+"))) and (person is None or person.aci is None)
